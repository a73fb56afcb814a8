"""The native CPU kernels: chosen by default on CPU, exact against oracles for any channel count, independent of
the thread count, and replaced by the XLA path (with a warning) where no compiler is available."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js
from jsparse3d.ops import _backend
from jsparse3d.ops import _native
from oracles import dense_sparse_conv
from oracles import np_conv
from oracles import random_tensor
from oracles import valid_part

needs_native = pytest.mark.usefixtures("native_kernels")  # skips without a compiler, fails on a broken build


def _implementations(fn, *args):
  return {e.params["implementation"] for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns
          if e.primitive.name.startswith("jsparse3d_sparse_conv")}


@needs_native
def test_default_is_native_on_cpu_and_xla_for_float64(rng):
  x = random_tensor(rng, channels=2)
  w = jnp.ones((3, 3, 3, 2, 2), jnp.float32)
  fwd_bwd = lambda f, w: jax.grad(lambda f, w: js.ops.conv3d(x.replace(feats=f), w).feats.sum(), (0, 1))(f, w)
  assert _implementations(fwd_bwd, x.feats, w) == {"native"}
  assert _implementations(lambda f: js.ops.conv3d(x.replace(feats=f), w, implementation="xla").feats,
                          x.feats) == {"xla"}
  with jax.enable_x64(True):
    x64 = x.replace(feats=x.feats.astype(jnp.float64))
    assert _implementations(lambda f: js.ops.conv3d(x64.replace(feats=f), w.astype(jnp.float64)).feats,
                            x64.feats) == {"xla"}
    with pytest.raises(ValueError, match="float64"):
      js.ops.conv3d(x64, w.astype(jnp.float64), implementation="native")


@needs_native
@pytest.mark.parametrize("c_in, c_out", [(1, 1), (5, 13), (16, 16), (20, 24), (33, 130), (64, 8), (7, 96)])
def test_any_channel_count_matches_numpy(rng, c_in, c_out):
  x = random_tensor(rng, n_grid=9, density=0.3, channels=c_in, batch=2)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, c_in, c_out)).astype(np.float32) / np.sqrt(c_in))
  cin, fin = valid_part(x)
  got = valid_part(js.ops.conv3d(x, w, implementation="native"))[1]
  want = np_conv(cin, fin, w, cin, dilation=(1, 1, 1))
  assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
  # Strided and transposed (the pairs are not mirrored, there is no centre).
  w2 = jnp.asarray(rng.standard_normal((2, 2, 2, c_in, c_out)).astype(np.float32))
  y = js.ops.conv3d(x, w2, stride=2, implementation="native")
  cy, gy = valid_part(y)
  want = np_conv(cin, fin, w2, cy, dilation=(1, 1, 1))
  assert np.abs(gy - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
  z = js.ops.conv_transpose3d(y, jnp.swapaxes(w2, 3, 4), implementation="native")
  zx = js.ops.conv_transpose3d(y, jnp.swapaxes(w2, 3, 4), implementation="xla")
  assert np.abs(np.asarray(z.feats) - np.asarray(zx.feats)).max() <= 1e-5 * max(1.0, np.abs(zx.feats).max())


@needs_native
@pytest.mark.parametrize("c_in, c_out", [(5, 13), (16, 16), (33, 40), (72, 50)])
def test_gradients_for_any_channel_count_match_the_dense_oracle(rng, c_in, c_out):
  x = random_tensor(rng, n_grid=8, density=0.3, channels=c_in)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, c_in, c_out)).astype(np.float32) / np.sqrt(c_in))
  cin, _ = valid_part(x)
  n = len(cin)
  probe = jnp.asarray(rng.standard_normal((n, c_out)).astype(np.float32))
  sparse = lambda f, w: jnp.vdot(js.ops.conv3d(x.replace(feats=f), w, implementation="native").feats[:n], probe)
  dense = lambda f, w: jnp.vdot(dense_sparse_conv(cin, f[:n], w, cin, stride=(1,) * 3, dilation=(1,) * 3,
                                                  shape=(8,) * 3, batch=1), probe)
  for got, want in zip(jax.grad(sparse, (0, 1))(x.feats, w), jax.grad(dense, (0, 1))(x.feats, w)):
    got, want = np.asarray(got), np.asarray(want)
    assert np.abs(got - want).max() <= 2e-5 * max(1.0, np.abs(want).max())


@needs_native
@pytest.mark.parametrize("c_in, c_out", [(3, 5), (16, 16), (48, 32), (80, 80)])
def test_the_input_gradient_kernel_reads_transposed_weights_bitwise(rng, c_in, c_out):
  """``wt=True`` (the input gradient's conv, ``x @ w[o].T``) transposes inside the kernel: bitwise the plain kernel
  on XLA's transposed copy, on a submanifold map (centre and mirrored pairs) and on a strided one."""
  from jsparse3d.ops import _conv_primitive
  x = _big_tensor(rng, c_out)
  subm, x = js.ops.kernel_map(x, 3)
  down, _ = js.ops.kernel_map(x, 2, stride=2)
  for kmap, k in ((subm, 27), (down, 8)):
    w = jnp.asarray(rng.standard_normal((k, c_in, c_out)).astype(np.float32))
    got = _conv_primitive.conv(x.feats, w, kmap, wt=True, implementation="native")
    want = _conv_primitive.conv(x.feats, jnp.swapaxes(w, 1, 2), kmap, implementation="native")
    np.testing.assert_array_equal(got, want)
    oracle = _conv_primitive.conv(x.feats, w, kmap, wt=True, implementation="xla")
    assert np.abs(np.asarray(got) - np.asarray(oracle)).max() <= 1e-5 * max(1.0, np.abs(np.asarray(oracle)).max())


def _big_tensor(rng, channels=8):
  """~16k rows: enough work for the conv kernel to split its rows into several parts at any channel count."""
  coords = np.unique(rng.integers(0, 40, (20000, 3)), axis=0)
  coords = np.concatenate([np.zeros((len(coords), 1), int), coords], axis=1)
  return js.SparseTensor.from_coords(coords, rng.standard_normal((len(coords), channels)).astype(np.float32))


# With 512-bit vectors, 40 channels take 32-column tiles and an 8-column tail, 80 channels 32- and 48-column tiles;
# from 40 up the weight gradient packs its panels.
@needs_native
@pytest.mark.parametrize("channels", [8, 40, 80])
def test_results_do_not_depend_on_the_number_of_threads(rng, monkeypatch, channels):
  x = _big_tensor(rng, channels)
  assert int(x.num_valid) > 15_000
  w = jnp.asarray(rng.standard_normal((3, 3, 3, channels, channels)).astype(np.float32) / np.sqrt(channels))
  w2 = jnp.asarray(rng.standard_normal((2, 2, 2, channels, channels)).astype(np.float32) / np.sqrt(channels))

  def loss(f, w, w2):
    h = js.ops.relu(js.ops.conv3d(x.replace(feats=f), w, implementation="native"))
    h = js.ops.conv3d(h, w2, stride=2, implementation="native")
    return jnp.sum(jnp.tanh(h.feats) ** 2)

  results = []
  for threads in ("1", "2", "3", "7"):
    monkeypatch.setenv("JSPARSE3D_NATIVE_THREADS", threads)
    results.append(jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(x.feats, w, w2))  # a fresh compile each time
  for other in results[1:]:
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other)):
      np.testing.assert_array_equal(a, b)
  # And the same sums as the XLA path, to float32 rounding.
  want = jax.value_and_grad(lambda f, w, w2: loss(f, w, w2))(x.feats, w, w2)
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(want)):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-4 * max(1.0, np.abs(np.asarray(b)).max())


@needs_native
def test_build_is_cached():
  first = _native.build()
  mtime = first.stat().st_mtime_ns
  assert _native.build() == first and first.stat().st_mtime_ns == mtime


def test_without_a_compiler_the_xla_path_is_used(tmp_path):
  script = textwrap.dedent("""
      import warnings
      import jax.numpy as jnp
      import numpy as np
      import jsparse3d as js
      x = js.SparseTensor.from_coords(np.array([[0, 0, 0, 0], [0, 1, 0, 0]]), np.ones((2, 2), np.float32))
      w = jnp.ones((3, 3, 3, 2, 2), jnp.float32)
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = js.ops.conv3d(x, w)
      assert np.asarray(y.feats)[:2].tolist() == [[4.0, 4.0], [4.0, 4.0]], y.feats
      assert any("native CPU kernels unavailable" in str(c.message) for c in caught), caught
      try:
        js.ops.conv3d(x, w, implementation="native")
      except RuntimeError as e:
        assert "no C++ compiler" in str(e) and "implementation='xla'" in str(e), e
      else:
        raise AssertionError("implementation='native' should raise without a compiler")
      print("ok")
  """)
  env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), JSPARSE3D_CACHE_DIR=str(tmp_path / "cache"))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_a_broken_build_fails_the_suite_where_a_compiler_exists(monkeypatch):
  # Regression: a failed build skipped the native tests, so a broken kernel could not fail CI.
  import shutil

  from conftest import require_native_kernels
  monkeypatch.setattr(_native, "_load", lambda: (False, "compiling _cpu_kernels.cc failed:\nerror: boom"))
  monkeypatch.setenv("JSPARSE3D_NATIVE", "1")
  monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
  with pytest.raises(pytest.fail.Exception, match="exists but the native CPU kernels failed to build"):
    require_native_kernels()
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(pytest.skip.Exception, match="cannot build here"):
    require_native_kernels()


def _logging_compiler(tmp_path, body='exec c++ "$@"'):
  """A CXX wrapper that appends one line per call (each source's compile and the link; not --version) to a log,
  then runs ``body``."""
  log = tmp_path / "compiles.log"
  script = tmp_path / "cxx"
  script.write_text(f'#!/bin/sh\ncase "$*" in *--version*) exec c++ "$@";; esac\necho x >> {log}\n{body}\n')
  script.chmod(0o755)
  return script, log


def _build_in_subprocess(env):
  code = "from jsparse3d.ops import _native; print(_native.build())"
  return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


@needs_native
def test_four_processes_starting_together_compile_once(tmp_path):
  cxx, log = _logging_compiler(tmp_path)
  env = dict(os.environ, CXX=f"env {cxx}", JSPARSE3D_CACHE_DIR=str(tmp_path / "cache"))  # a two-word CXX
  procs = [_build_in_subprocess(env) for _ in range(4)]
  outs = [p.communicate(timeout=600) for p in procs]
  assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
  paths = {out.strip() for out, _ in outs}
  assert len(paths) == 1 and log.read_text().count("x") == len(_native.SOURCES) + 1  # one build: compiles, link
  lib = paths.pop()
  import ctypes
  ctypes.cdll.LoadLibrary(lib)  # a complete library


def test_a_failed_compile_is_remembered_with_the_fix(tmp_path):
  cxx, log = _logging_compiler(tmp_path, body='echo "error: no such header" >&2; exit 1')
  env = dict(os.environ, CXX=str(cxx), JSPARSE3D_CACHE_DIR=str(tmp_path / "cache"))
  calls = []
  for _ in range(2):
    p = _build_in_subprocess(env)
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0 and "error: no such header" in err
    calls.append(log.read_text().count("x"))
  assert "remembered from an earlier attempt" in err and "CXX=" in err and ".failed" in err
  assert calls == [len(_native.SOURCES)] * 2  # the sources' compiles once; the second process did not compile again


def test_an_unwritable_cache_home_falls_back_to_a_temporary_folder(tmp_path, monkeypatch):
  blocker = tmp_path / "not-a-folder"
  blocker.write_text("")  # a file where the cache folder's parent should be: it cannot be created
  monkeypatch.delenv("JSPARSE3D_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
  import tempfile
  path = _native.cache_dir()
  assert path.parent == Path(tempfile.gettempdir()) and path.name.startswith("jsparse3d-")


def test_every_op_resolves_implementation_in_one_place(rng):
  """One set of names and one message for every op; a name an op lacks says which ones it has."""
  x = random_tensor(rng, channels=2)
  w = jnp.ones((3, 3, 3, 2, 2), jnp.float32)
  xyz, batch = jnp.zeros((4, 3), jnp.float32), jnp.zeros(4, jnp.int32)
  calls = {
      "conv": lambda impl: js.ops.conv3d(x, w, implementation=impl),
      "kernel_map": lambda impl: js.ops.kernel_map(x, 3, implementation=impl),
      "index": lambda impl: js.ops.build_index(x.coords, x.num_valid, implementation=impl),
      "voxel_to_point": lambda impl: js.ops.voxel_to_point(x, xyz, batch, implementation=impl),
  }
  for op, call in calls.items():
    with pytest.raises(ValueError, match=rf"{op}: implementation must be one of .* got 'cuda'"):
      call("cuda")
    for name in {"xla", "native", "pallas"} - set(_backend.SUPPORTED[op]):
      with pytest.raises(ValueError, match=rf"{op} has no '{name}' implementation; use one of"):
        call(name)
  # The defaults on this CPU backend: native where an op has it, else XLA.
  for op, supported in _backend.SUPPORTED.items():
    want = "native" if "native" in supported and _native.available() else "xla"
    assert _backend.resolve(op, None) == want
    with jax.enable_x64(True):
      assert _backend.resolve(op, None, jnp.float64) == "xla"
