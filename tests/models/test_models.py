"""Model registry, checkpoint loading/import, the Clay embedder's input handling and ``spectral``."""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geofm.cli import app
from geofm.errors import ModelError
from geofm.models import checkpoints, get_model_spec, list_models, load_embedder
from geofm.models.registry import ClayEmbedder, load_clay_encoder, time_latlon
from geofm.models.spectral import EMBEDDING_DIM, SPECTRAL_BANDS, spectral_features
from geofm.sentinel2 import band
from helpers import official_layout_checkpoint, perturbed_tiny

BANDS = list(SPECTRAL_BANDS)
WHEN = [datetime(2023, 7, 15, 10), datetime(2022, 3, 2, 14), datetime(2021, 11, 20, 8)]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "model-cache"
    monkeypatch.setenv("GEOFM_MODEL_CACHE", str(cache))
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)  # never touch the network
    return cache


def chips(seed: int = 0, n: int = 3, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.array([band(b).clay_mean for b in BANDS], dtype=np.float32)
    return (means[None, :, None, None] + rng.normal(0, 300, (n, len(BANDS), size, size))).astype(np.float32)


# ---- registry ------------------------------------------------------------------------------------
def test_registry_specs() -> None:
    names = [s.name for s in list_models()]
    assert names == ["clay-v1.5", "clay-v1", "clay-tiny", "spectral"]
    v15 = get_model_spec("clay-v1.5")
    assert (v15.embedding_dim, v15.patch_size, v15.hf_filename) == (1024, 8, "v1.5/clay-v1.5.ckpt")
    assert get_model_spec("clay-v1").embedding_dim == 768
    assert get_model_spec("clay-v1").hf_filename == "v1/clay-v1-base.ckpt"
    assert v15.bands == ("blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                         "swir16", "swir22")
    assert v15.wavelengths == (0.493, 0.56, 0.665, 0.704, 0.74, 0.783, 0.842, 0.865, 1.61, 2.19)
    assert get_model_spec("spectral").embedding_dim == EMBEDDING_DIM == 32


def test_unknown_model_lists_registered() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'clay-v9'.*clay-v1\.5.*spectral"):
        get_model_spec("clay-v9")
    with pytest.raises(ValueError, match="unknown model"):
        load_embedder("nope")


def test_bad_device_is_named() -> None:
    with pytest.raises(ValueError, match="'tpu'"):
        load_embedder("clay-tiny", "random", device="tpu")


# ---- checkpoints -----------------------------------------------------------------------------------
def _embed(e: ClayEmbedder, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(px)
    return e.embed(px, BANDS, WHEN[:n], [38.7, -1.3, -33.9][:n], [-9.1, 36.8, 151.2][:n], 10.0)


def test_official_layout_checkpoint_loads_strictly_and_matches(tmp_path: Path) -> None:
    model = perturbed_tiny()
    path = official_layout_checkpoint(tmp_path / "clay-tiny.ckpt", model)
    loaded, source = load_clay_encoder(get_model_spec("clay-tiny"), str(path))
    assert source == str(path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    x = (torch.randn(2, 3, 16, 16), torch.rand(2, 4), torch.rand(2, 4), 10.0, torch.tensor([0.49, 0.56, 0.66]))
    with torch.inference_mode():
        assert torch.equal(loaded(*x), model(*x))


def test_checkpoint_with_unknown_pickled_objects_loads(tmp_path: Path) -> None:
    """Real Lightning files carry hyper-parameter objects: those are skipped, never executed."""
    model = perturbed_tiny()
    state = {f"model.encoder.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"path": Path("/x")}}, path)
    loaded, _ = load_clay_encoder(get_model_spec("clay-tiny"), str(path))
    assert torch.equal(loaded.cls_token, model.cls_token)


def test_import_to_safetensors_and_reload_is_identical(tmp_path: Path, _isolated_cache: Path) -> None:
    model = perturbed_tiny()
    ckpt = official_layout_checkpoint(tmp_path / "tiny.ckpt", model)
    result = CliRunner().invoke(app, ["models", "import", "clay-tiny", "--checkpoint", str(ckpt)])
    assert result.exit_code == 0, result.output
    cached = _isolated_cache / "clay-tiny.safetensors"
    assert cached.is_file()
    from safetensors import safe_open

    with safe_open(str(cached), "pt") as f:  # encoder only, no prefix
        assert set(f.keys()) == set(model.state_dict())
    direct = ClayEmbedder(get_model_spec("clay-tiny"), model, torch.device("cpu"), "in memory")
    via_cache = load_embedder("clay-tiny", None, "cpu")  # checkpoint None -> the cache
    assert via_cache.weights == str(cached)
    px = chips()
    for a, b in zip(_embed(direct, px), via_cache.embed(px, BANDS, WHEN, [38.7, -1.3, -33.9],
                                                           [-9.1, 36.8, 151.2], 10.0), strict=True):
        assert np.array_equal(a, b)


def test_wrong_checkpoint_names_file_and_mismatch(tmp_path: Path) -> None:
    path = official_layout_checkpoint(tmp_path / "tiny.ckpt", perturbed_tiny())
    with pytest.raises(ValueError, match=r"tiny\.ckpt does not fit clay-v1\.5.*shape mismatches.*dim 72"):
        load_clay_encoder(get_model_spec("clay-v1.5"), str(path))
    with pytest.raises(ValueError, match=r"tiny\.ckpt does not fit clay-v1:"):
        checkpoints.import_checkpoint(get_model_spec("clay-v1"), path)
    state = torch.load(path, weights_only=True)["state_dict"]
    del state["model.encoder.transformer.norm.bias"]
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    with pytest.raises(ValueError, match=r"partial\.ckpt.*1 missing keys.*transformer\.norm\.bias"):
        load_clay_encoder(get_model_spec("clay-tiny"), str(tmp_path / "partial.ckpt"))
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.ckpt: not a readable PyTorch checkpoint"):
        load_clay_encoder(get_model_spec("clay-tiny"), str(tmp_path / "junk.ckpt"))
    with pytest.raises(ModelError, match="checkpoint not found: .*missing.ckpt"):
        load_clay_encoder(get_model_spec("clay-tiny"), str(tmp_path / "missing.ckpt"))


def test_offline_without_weights_says_how_to_get_them() -> None:
    with pytest.raises(ModelError, match=r"no weights for clay-v1\.5.*geofm models import clay-v1\.5"):
        load_embedder("clay-v1.5", None, "cpu")
    with pytest.raises(ValueError, match="clay-tiny has no official weights"):
        load_embedder("clay-tiny", None, "cpu")
    result = CliRunner().invoke(app, ["models", "import", "clay-v1"])
    assert result.exit_code != 0


def test_models_list_cli() -> None:
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    for name in ("clay-v1.5", "clay-v1", "clay-tiny", "spectral"):
        assert name in result.output


# ---- the Clay embedder -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_embedder() -> ClayEmbedder:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = load_embedder("clay-tiny", "random:7", "cpu")
    assert any("RANDOM weights" in str(w.message) for w in caught)
    assert e.weights.startswith("RANDOM")
    return e  # type: ignore[return-value]


def test_embedder_shapes_deterministic_and_batch_independent(tiny_embedder: ClayEmbedder) -> None:
    px = chips()
    cls, patch = _embed(tiny_embedder, px)
    assert cls.shape == (3, 72) and patch.shape == (3, 4, 72)
    assert cls.dtype == np.float32 and patch.dtype == np.float32
    cls2, patch2 = _embed(tiny_embedder, px)
    assert np.array_equal(cls, cls2) and np.array_equal(patch, patch2)
    for i in range(3):
        one = tiny_embedder.embed(px[i:i + 1], BANDS, WHEN[i:i + 1], [[38.7, -1.3, -33.9][i]],
                                  [[-9.1, 36.8, 151.2][i]], 10.0)
        assert np.abs(one[0][0] - cls[i]).max() < 1e-5
    # a second seed gives other weights
    other = load_embedder("clay-tiny", 8, "cpu")
    assert not np.allclose(_embed(other, px)[0], cls)


def test_nodata_is_filled_before_normalisation(tiny_embedder: ClayEmbedder) -> None:
    px = chips(n=1)
    holed = px.copy()
    holed[:, :, :8, :8] = np.nan  # the top-left patch has no data
    cls, patch = _embed(tiny_embedder, holed)
    assert np.isfinite(cls).all() and np.isfinite(patch).all()
    # filling is "the band mean", i.e. identical to feeding Clay's mean DN there
    mean_filled = px.copy()
    mean_filled[:, :, :8, :8] = np.array([band(b).clay_mean for b in BANDS])[None, :, None, None]
    cls_m, patch_m = _embed(tiny_embedder, mean_filled)
    assert np.abs(cls - cls_m).max() < 1e-5


def test_time_latlon_channels_lat_first() -> None:
    enc = time_latlon([datetime(2023, 7, 15, 10)], [38.7223], [-9.1393])[0]
    week = 28 * 2 * np.pi / 52
    hour = 10 * 2 * np.pi / 24
    lat, lon = np.radians(38.7223), np.radians(-9.1393)
    expected = [np.sin(week), np.cos(week), np.sin(hour), np.cos(hour), np.sin(lat), np.cos(lat),
                np.sin(lon), np.cos(lon)]
    np.testing.assert_allclose(enc, expected, atol=1e-6)


def test_embedder_rejects_bad_inputs(tiny_embedder: ClayEmbedder) -> None:
    with pytest.raises(ValueError, match="pixels must be"):
        tiny_embedder.embed(np.zeros((1, 3, 16, 16), np.float32), BANDS, WHEN[:1], [0], [0], 10.0)
    with pytest.raises(ValueError, match="no normalisation statistics for bands \\['coastal'\\]"):
        tiny_embedder.embed(np.zeros((1, 1, 16, 16), np.float32), ["coastal"], WHEN[:1], [0], [0], 10.0)
    with pytest.raises(ValueError, match="unknown Sentinel-2 band 'B99'"):
        tiny_embedder.embed(np.zeros((1, 1, 16, 16), np.float32), ["B99"], WHEN[:1], [0], [0], 10.0)


# ---- spectral -----------------------------------------------------------------------------------------
# Typical L2A reflectance x 10000 per band (blue..swir22) for three land covers.
SPECTRA = {
    "water": [600, 700, 500, 450, 400, 350, 300, 280, 150, 100],
    "forest": [250, 500, 300, 900, 2500, 3000, 3300, 3400, 1600, 700],
    "bare": [1200, 1500, 1900, 2100, 2300, 2400, 2500, 2600, 3300, 2800],
}


def scene(kind: str, seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.array(SPECTRA[kind], dtype=np.float32)[:, None, None]
    return (s * (1 + rng.normal(0, 0.05, (len(BANDS), size, size)))).astype(np.float32)


def test_spectral_separates_land_covers() -> None:
    kinds = ["water", "forest", "bare"]
    px = np.stack([scene(k, seed) for seed in (0, 1) for k in kinds])
    cls, patch = spectral_features(px, BANDS)
    assert cls.shape == (6, 32) and patch.shape == (6, 16, 32)
    unit = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    sim = unit @ unit.T
    for i in range(3):
        same = sim[i, i + 3]
        others = [sim[i, j] for j in range(6) if j % 3 != i]
        assert same > 0.95 and max(others) < same - 0.3
    # NDVI (feature 10) of forest high, water negative; NDWI (11) of water positive
    assert patch[1, :, 10].min() > 0.7 and patch[0, :, 10].max() < 0 and patch[0, :, 11].min() > 0.3


def test_spectral_on_rgb_nir_only_keeps_positions_and_separates_covers() -> None:
    """Data with only blue, green, red, nir: absent bands and the indices needing them are 0, the
    other features equal the full-band ones, and land covers still separate."""
    rgbn = ["blue", "green", "red", "nir"]
    kinds = ["water", "forest", "bare"]
    full_px = np.stack([scene(k, seed) for seed in (0, 1) for k in kinds])
    px = full_px[:, [BANDS.index(b) for b in rgbn]]
    cls, patch = spectral_features(px, rgbn)
    _, full = spectral_features(full_px, BANDS)
    assert cls.shape == (6, 32) and patch.shape == (6, 16, 32)
    kept = [BANDS.index(b) for b in rgbn]
    np.testing.assert_allclose(patch[..., kept], full[..., kept], rtol=1e-6)  # band means in place
    np.testing.assert_allclose(patch[..., [10, 11]], full[..., [10, 11]], rtol=1e-6)  # NDVI, NDWI
    absent = [i for i in range(10) if i not in kept] + [12, 13, 14, 15]  # other bands; MNDWI..NBR
    assert np.all(patch[..., absent] == 0)
    unit = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    sim = unit @ unit.T
    for i in range(3):
        assert sim[i, i + 3] > max(sim[i, j] for j in range(6) if j % 3 != i) + 0.1


def test_spectral_patch_change_is_localised_and_nan_safe() -> None:
    before = scene("forest", 0)
    after = before.copy()
    after[:, 8:16, 16:24] = scene("bare", 1)[:, 8:16, 16:24]  # patch row 1, col 2 -> index 6
    after[:, :8, :8] = np.nan  # patch 0 has no data
    _, patch = spectral_features(np.stack([before, after]), BANDS)
    a, b = patch[0], patch[1]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    assert np.isfinite(patch).all()
    assert np.argmin(np.where(np.arange(16) == 0, 1, cos)) == 6
    assert np.all(patch[1, 0] == 0)
    assert cos[[i for i in range(16) if i not in (0, 6)]].min() > 0.9


def test_spectral_needs_its_bands() -> None:
    without_nir = [b for b in BANDS if b != "nir"]
    with pytest.raises(ValueError, match=r"missing \['nir'\]"):
        spectral_features(np.zeros((1, 9, 8, 8), np.float32), without_nir)
    e = load_embedder("spectral")
    cls, patch = e.embed(chips(n=2), BANDS, WHEN[:2], [0, 0], [0, 0], 10.0)
    assert cls.shape == (2, 32) and patch.shape == (2, 4, 32)


def test_default_model_prefers_imported_clay(tmp_path: Path, _isolated_cache: Path) -> None:
    from geofm.models.registry import default_model, has_weights

    assert default_model() == "spectral" and has_weights("spectral") and not has_weights("clay-v1")
    checkpoints.import_checkpoint(get_model_spec("clay-tiny"),
                                  official_layout_checkpoint(tmp_path / "t.ckpt", perturbed_tiny()))
    assert default_model(["clay-v1", "clay-tiny"]) == "clay-tiny"
