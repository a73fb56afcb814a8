"""A built wheel installed into a fresh virtualenv, used from outside the source tree: the package data the
native kernels compile from ships in it, and the trainer's package imports. Slow (a wheel build and a venv)."""

import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run from the new venv, in a folder outside the checkout: builds the native kernels from the installed sources
# and checks them against the XLA path, and runs the trainer's smoke config for one step.
_USE = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    import numpy as np
    import jsparse3d as js
    from jsparse3d.ops import _native
    import train
    root = sys.argv[1]
    for module in (js, train, _native):
      assert not os.path.realpath(module.__file__).startswith(root), module.__file__
    assert all(source.exists() for source in _native.SOURCES + _native.HEADERS)
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(0, 8, (200, 3)), axis=0)
    x = js.SparseTensor.from_coords(np.c_[np.zeros(len(coords), int), coords], rng.normal(size=(len(coords), 3)))
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 3, 4)), jnp.float32)
    native = js.ops.conv3d(x, w, implementation="native").feats
    xla = js.ops.conv3d(x, w, implementation="xla").feats
    assert float(jnp.max(jnp.abs(native - xla))) < 1e-4
    print("ok", _native.build())
""")


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout (the wheel is built from its files)")
def test_a_built_wheel_works_in_a_fresh_venv_outside_the_source_tree(tmp_path):
  # The wheel is built from the checkout's tracked files alone, so no build artefact of an earlier install (an
  # egg-info's file list) can supply what the package data leaves out.
  source = tmp_path / "source"
  tracked = subprocess.run(["git", "ls-files", "-z"], check=True, capture_output=True, cwd=ROOT).stdout
  for name in filter(None, tracked.decode().split("\0")):
    if (ROOT / name).is_file():
      (source / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, source / name)
  wheels = tmp_path / "wheels"
  subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                  "-w", str(wheels)], check=True, capture_output=True, cwd=tmp_path)
  (wheel,) = wheels.glob("jsparse3d-*.whl")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
  python = venv / "bin" / "python"
  subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                 capture_output=True)
  # The dependencies come from this environment's site-packages as a plain path entry (its .pth files, among them
  # this checkout's editable install, are not processed there), so nothing is downloaded.
  purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                           capture_output=True, text=True).stdout.strip()
  Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | dict(JSPARSE3D_CACHE_DIR=str(tmp_path / "cache"))
  proc = subprocess.run([python, "-c", _USE, str(ROOT)], env=env, capture_output=True, text=True, cwd=tmp_path,
                        timeout=600)
  assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]
  assert str(tmp_path / "cache") in proc.stdout
