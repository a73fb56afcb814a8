"""Strict JAX for every test, and several CPU devices for pmap tests."""

import os

# Must precede the first jax import of the test process.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def rng():
  import numpy as np
  return np.random.default_rng(0)


def require_native_kernels() -> None:
  """Skips where the native kernels cannot exist (no C++ compiler, or JSPARSE3D_NATIVE=0); fails where a compiler
  exists but the build failed, so that a broken kernel source fails CI instead of skipping its tests."""
  import shutil

  from jsparse3d.ops import _native
  ok, why = _native._load()
  if ok:
    return
  compiler = os.environ.get("CXX", "c++")
  if os.environ.get("JSPARSE3D_NATIVE", "1") == "0" or shutil.which(compiler) is None:
    pytest.skip(f"the native CPU kernels cannot build here ({why.splitlines()[0]}); the XLA run covers this test")
  pytest.fail(f"the C++ compiler {compiler!r} exists but the native CPU kernels failed to build:\n{why}",
              pytrace=False)


def state_leaves(state) -> dict:
  """Every leaf of a trainer's state as numpy (PRNG keys as their key data), by path."""
  import numpy as np
  from flax import nnx
  leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]
  return {jax.tree_util.keystr(p): np.asarray(jax.random.key_data(v) if jax.dtypes.issubdtype(
      v.dtype, jax.dtypes.prng_key) else v) for p, v in leaves}


@pytest.fixture
def native_kernels():
  require_native_kernels()


@pytest.fixture(params=["xla", "native"])
def impl(request, monkeypatch):
  """Runs a test once per convolution implementation, by making it the default one (implementation=None)."""
  from jsparse3d.ops import _native
  if request.param == "xla":
    monkeypatch.setattr(_native, "available", lambda: False)
  else:
    require_native_kernels()
  return request.param
