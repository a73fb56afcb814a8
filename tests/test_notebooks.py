"""The notebooks (``notebooks/NN_*.py``, jupytext percent scripts) execute top to bottom as notebooks, in a Jupyter
kernel, at the small sizes they take when ``JSPARSE3D_NOTEBOOK_CI=1``, and each draws its figures."""

import json
import os
import sys
from pathlib import Path

import jupytext
import nbclient
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
KITTI_SAMPLE = Path(os.environ.get("JSPARSE3D_KITTI_SAMPLE", ROOT.parent / "shared" / "data" / "semantickitti-sample"))


def test_the_notebooks_are_there_and_their_sources_are_canonical_percent_scripts():
  assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]
  for path in NOTEBOOKS:
    text = path.read_text()
    nb = jupytext.reads(text, fmt="py:percent")
    versionless = lambda t: [line for line in t.splitlines() if "format_version" not in line and "jupytext_version"
                             not in line]  # the header lines that change with the jupytext release
    assert versionless(jupytext.writes(nb, fmt="py:percent")) == versionless(text), (
        f"{path.name} is not as jupytext writes it: run `jupytext --to py:percent {path.name}` (notebooks/README.md)")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if path.stem != "01_quickstart":  # the quickstart is small at full size; the others train or sweep
      assert 'os.environ.get("JSPARSE3D_NOTEBOOK_CI") == "1"' in code, f"{path.name}: no CI size switch"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_executes_and_draws_its_figures(path, tmp_path, monkeypatch):
  # A kernel spec of this interpreter, so the kernel runs in this environment whatever kernels the machine has.
  spec = tmp_path / "jupyter" / "kernels" / "jsparse3d-tests"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "jsparse3d tests", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("JSPARSE3D_NOTEBOOK_CI", "1")
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  if (KITTI_SAMPLE / "000000.bin").exists():
    monkeypatch.setenv("JSPARSE3D_KITTI_SAMPLE", str(KITTI_SAMPLE))
  nb = jupytext.read(path)
  run = tmp_path / "run"
  run.mkdir()
  nbclient.NotebookClient(nb, timeout=900, kernel_name="jsparse3d-tests",
                          resources={"metadata": {"path": str(run)}}).execute()
  outputs = [o for c in nb.cells for o in c.get("outputs", [])]
  figures = sum("image/png" in o.get("data", {}) for o in outputs)
  shows = sum(c.source.count("plt.show()") for c in nb.cells if c.cell_type == "code")
  if any("triton is not installed" in o.get("text", "") for o in outputs):
    shows -= 1  # the kernels notebook draws its GPU-compile figure only where triton is installed
  assert figures == shows > 0, f"{path.name}: {figures} figures drawn for {shows} plt.show() calls"
