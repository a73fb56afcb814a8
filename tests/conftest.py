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


@pytest.fixture(params=["xla", "native"])
def impl(request, monkeypatch):
  """Runs a test once per convolution implementation, by making it the default one (implementation=None)."""
  from jsparse3d.ops import _native
  if request.param == "xla":
    monkeypatch.setattr(_native, "available", lambda: False)
  elif not _native.available():
    pytest.skip("the native CPU kernels did not build here (see the RuntimeWarning); the XLA run covers this test")
  return request.param
