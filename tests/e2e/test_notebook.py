"""examples/quickstart.ipynb, executed cell by cell with nbclient in a kernel of this environment, in a
temporary working folder: it synthesizes an archive with planted change, runs the pipeline through
``geofm.run`` and looks at the results through ``geofm.open``. The test checks what the notebook found
(the planted changes rank first in change intensity, a similarity search from the new lake returns water
chips, the lake chip's similarity falls after the planted date) and that it drew its pictures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"
KERNEL = "geofm-test"
# Appended by the test (never saved): hands the notebook's own findings back as one JSON line.
PROBE = "import json as _json\nprint('SUMMARY=' + _json.dumps(summary, default=str))"


def _kernelspec(folder: Path) -> Path:
    """A kernelspec that starts ipykernel with this interpreter (the venv's python), whatever kernels
    the machine has installed; written locally, nothing is fetched."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "geofm (test venv)", "language": "python"}))
    return folder


def test_committed_notebook_has_no_outputs() -> None:
    """The notebook is committed clean: outputs are made by running it, not stored."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_quickstart_notebook_finds_the_planted_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path / "jupyter")))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(work)}}).execute()

    # the notebook wrote its outputs in its working folder, nowhere else
    assert (work / "quickstart-output" / "output" / "quickstart" / "lance-db").is_dir()
    stdout = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    summary = json.loads(stdout.split("SUMMARY=", 1)[1])

    # change detection: the planted changes are the most changed chips, all of them High
    planted, top = set(summary["planted_chips"]), summary["most_changed"]
    assert len(planted) >= 4
    assert len(set(top) & planted) >= 0.75 * len(planted), (top, planted)
    assert summary["planted_intensity"] == ["High"]
    # the lake chip: similar to its baseline before the water came (2023-09-12), not after
    sims = dict(zip(summary["similarity_dates"]["new_water"], summary["similarity"]["new_water"], strict=True))
    assert all(v > 0.8 for d, v in sims.items() if d < "2023-09-12")
    assert all(v < 0.3 for d, v in sims.items() if d >= "2023-09-12")
    steady = summary["similarity"]["steady"]
    assert min(steady) > 0.6
    # search from the new lake on the last date returns water chips
    assert summary["query"]["cover"] == "water"
    assert summary["hit_covers"].count("water") >= 4, summary["hit_covers"]

    # the pictures: change map, similarity chart, before/after, search thumbnails
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4
