"""The Python snippets of README.md and docs/, and the examples in docstrings, run as written; the repository
refers to nothing outside itself."""

import doctest
import importlib
import io
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jsparse3d

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
                              if "```python" in p.read_text())


def _python_blocks(path: Path) -> list[str]:
  return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", DOCS)
def test_snippets_run_as_written(doc, tmp_path):
  blocks = _python_blocks(ROOT / doc)
  assert blocks, f"{doc} has no python snippet"
  for i, code in enumerate(blocks):
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{doc} snippet {i} failed:\n{code}\n{proc.stderr[-3000:]}"


def test_nothing_refers_to_files_outside_the_repository():
  pattern = re.compile(r"\.\./shared")
  offenders = []
  for folder in ("README.md", "docs", "jsparse3d", "pallas_kernels", "train"):
    for path in [ROOT / folder] if (ROOT / folder).is_file() else (ROOT / folder).rglob("*"):
      if path.suffix in (".py", ".md", ".cc", ".toml") and pattern.search(path.read_text(errors="ignore")):
        offenders.append(str(path.relative_to(ROOT)))
  assert not offenders, f"these refer to ../shared: {offenders}"


def _docstring_examples() -> dict:
  """Every docstring with examples in the jsparse3d package, by name (re-exports are found once, where defined)."""
  finder = doctest.DocTestFinder(exclude_empty=True)
  found = {}
  for info in pkgutil.walk_packages(jsparse3d.__path__, "jsparse3d."):
    module = importlib.import_module(info.name)
    for test in finder.find(module, info.name):
      if test.examples:
        found[test.name] = test
  return found


EXAMPLES = _docstring_examples()


def _namespace() -> dict:
  """What a docstring example may use without defining it: the usual imports, ``key`` and ``x``, a SparseTensor of
  two events with 32 float32 channels built from ``coords`` and ``feats``."""
  rng = np.random.default_rng(0)
  coords = np.unique(np.c_[rng.integers(0, 2, 600), rng.integers(0, 24, (600, 3))], axis=0).astype(np.int32)
  feats = rng.standard_normal((len(coords), 32)).astype(np.float32)
  x = jsparse3d.SparseTensor.from_coords(coords, feats, capacity=1024)
  return dict(jax=jax, jnp=jnp, np=np, nnx=nnx, jsparse3d=jsparse3d, key=jax.random.key(0), coords=coords,
              feats=feats, x=x)


def test_the_package_has_docstring_examples():
  assert len(EXAMPLES) >= 20, sorted(EXAMPLES)


# Examples that build a whole flax-initialised model eagerly (a compile per weight shape): 30 s each on 2 cores.
SLOW_EXAMPLES = {"jsparse3d.models._pvcnn.PVCNN", "jsparse3d.models._pointnet.PointNet",
                 "jsparse3d.nas._spvcnn.ElasticSPVCNN"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EXAMPLES else n
                                  for n in sorted(EXAMPLES)])
def test_docstring_example_runs(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # examples that write files write them here
  test = EXAMPLES[name]
  test.globs = {**test.globs, **_namespace()}
  out = io.StringIO()
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  result = runner.run(test, out=out.write, clear_globs=False)
  assert result.failed == 0, out.getvalue()
