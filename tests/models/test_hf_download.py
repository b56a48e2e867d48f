"""The Hugging Face download path of `geofm models import`, run for real against a local server that
answers like the Hub's ``resolve`` endpoint (the real Hub is out of reach here): the official file is
fetched, converted to safetensors and loads with the same outputs; a missing file is a clear error."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from geofm.errors import ModelError
from geofm.models import checkpoints, get_model_spec
from geofm.models.registry import load_clay_encoder
from helpers import official_layout_checkpoint, perturbed_tiny

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _HubLike(BaseHTTPRequestHandler):
    """``/<repo>/resolve/<revision>/<file>``: HEAD gives the commit, ETag and size; GET the bytes."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def _lookup(self) -> bytes | None:
        self.requests.append(f"{self.command} {self.path}")
        return self.files.get(self.path.split("?")[0])

    def _headers(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        body = self._lookup()
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(body)

    def do_GET(self) -> None:  # noqa: N802
        body = self._lookup()
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(body)
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_HubLike]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HubLike)
    _HubLike.files, _HubLike.requests = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("GEOFM_MODEL_CACHE", str(tmp_path / "model-cache"))
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    try:
        yield _HubLike
    finally:
        server.shutdown()
        server.server_close()


def _tiny_with_official_file() -> object:
    """clay-tiny's spec, given an official file name so the import goes to the (local) Hub."""
    return dataclasses.replace(get_model_spec("clay-tiny"), hf_filename="v1.5/clay-v1.5.ckpt", random_only=False)


def test_import_downloads_the_official_file_and_converts_it(hub: type[_HubLike], tmp_path: Path) -> None:
    model = perturbed_tiny()
    ckpt = official_layout_checkpoint(tmp_path / "clay-v1.5.ckpt", model)
    hub.files[f"/{checkpoints.HF_REPO}/resolve/main/v1.5/clay-v1.5.ckpt"] = ckpt.read_bytes()
    spec = _tiny_with_official_file()
    out = checkpoints.import_checkpoint(spec)  # no --checkpoint: fetched from the Hub
    assert out.suffix == ".safetensors" and out.is_file()
    assert any(r.startswith("GET /made-with-clay/Clay/resolve/main/v1.5/clay-v1.5.ckpt") for r in hub.requests)
    loaded, _ = load_clay_encoder(spec, str(out))
    x = torch.randn(2, 4, 16, 16)
    args = (torch.zeros(2, 4), torch.zeros(2, 4), torch.tensor(10.0), torch.tensor([0.665, 0.56, 0.493, 0.842]))
    with torch.inference_mode():
        assert torch.equal(loaded(x, *args), model.eval()(x, *args))


def test_missing_file_on_the_hub_is_a_clear_error(hub: type[_HubLike]) -> None:
    spec = _tiny_with_official_file()
    with pytest.raises(ModelError, match=r"(?s)no weights for clay-tiny.*Entry Not Found.*geofm models import clay-tiny"):
        checkpoints.ensure_cached(spec)
