"""GPU compilation without a GPU: every Pallas kernel lowers for CUDA and compiles to sm_80 and sm_90 cubins with
no register spills at its default block sizes; a U-Net of jsparse3d layers lowers with the Triton kernels in it."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jsparse3d as js
from jsparse3d import nn
from pallas_kernels import _aot
from pallas_kernels import _config

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="the triton package is not installed (pip install -e '.[dev]' brings it); "
                                         "the cubin compiles need its compiler, ptxas and cuobjdump")


def _double(x):
  from jax.experimental import pallas as pl

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2

  return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(2,),
                        in_specs=[pl.BlockSpec((64,), lambda i: (i,))], out_specs=pl.BlockSpec((64,), lambda i: (i,)),
                        compiler_params=_config.compiler_params(4, 1), name="double")(x)


def test_triton_calls_are_found_in_the_cuda_lowering():
  calls = _aot.triton_calls(_aot.lower_for_cuda(_double, jnp.zeros((128,), jnp.float32)))
  assert [c["name"] for c in calls] == ["double"] and calls[0]["grid"] == (2, 1, 1)
  assert calls[0]["num_warps"] == 4
  assert "tt.func" in _aot.ttir_text(calls[0]["ir"])
  with pytest.raises(ValueError, match="no Triton kernel"):
    _aot.compile_function(lambda x: x * 2, jnp.zeros((4,), jnp.float32))


def test_jax_version_is_checked():
  _config.check_jax_version()
  with pytest.raises(RuntimeError, match="supports jax"):
    _config.check_jax_version("0.9.0")


@needs_triton
def test_every_kernel_compiles_for_sm80_and_sm90_without_spills_at_defaults():
  from pallas_kernels import report
  seen = set()
  for case in report.cases():
    builds = _aot.compile_function(case.fn, *case.args)
    assert {b.arch for b in builds} == {80, 90}
    for b in builds:
      seen.add(b.name)
      assert b.registers > 0
      if case.default:
        assert b.spill_stores == 0 and b.spill_loads == 0 and b.local == 0, b
      if b.name in ("sparse_conv_forward", "sparse_conv_wgrad", "sparse_conv_pair_products", "sparse_conv_pair_wgrad"):
        assert b.mma, f"{b.name} sm_{b.arch}: no tensor-core instructions"
  assert seen == {"sparse_conv_forward", "sparse_conv_wgrad", "sparse_conv_pair_products", "sparse_conv_gather_sum",
                  "sparse_conv_pair_wgrad", "hash_build", "hash_query", "devoxelize_forward", "devoxelize_backward"}


class _TinyUNet(nnx.Module):
  def __init__(self, rngs):
    kw = dict(implementation="pallas", rngs=rngs)
    self.stem = nn.SparseConv3d(1, 8, 3, **kw)
    self.bn = nn.BatchNorm(8, rngs=rngs)
    self.down = nn.SparseConv3d(8, 16, 2, stride=2, **kw)
    self.mid = nn.SparseConv3d(16, 16, 3, **kw)
    self.up = nn.SparseConvTranspose3d(16, 8, 2, stride=2, **kw)
    self.head = nn.SparseConv3d(16, 3, 1, **kw)

  def __call__(self, x):
    h = js.ops.relu(self.bn(self.stem(x)))
    y = self.up(self.mid(self.down(h)), target=h)
    return self.head(js.ops.cat([h, y]))


def test_a_unet_with_pallas_layers_lowers_for_cuda_with_its_triton_kernels(rng):
  coords = np.unique(rng.integers(0, 12, (150, 3)), axis=0)
  x = js.SparseTensor.from_coords(coords, rng.random((len(coords), 1)).astype(np.float32), capacity=256)
  model = _TinyUNet(nnx.Rngs(0))
  graphdef, state = nnx.split(model)

  def loss(state, x):
    return jnp.sum(nnx.merge(graphdef, state)(x).feats ** 2)

  fwd = [c["name"] for c in _aot.triton_calls(_aot.lower_for_cuda(loss, state, x))]
  assert fwd.count("sparse_conv_forward") == 5
  grad = [c["name"] for c in _aot.triton_calls(_aot.lower_for_cuda(jax.grad(loss), state, x))]
  assert grad.count("sparse_conv_wgrad") == 5 and grad.count("sparse_conv_forward") >= 9


@pytest.mark.slow  # 24 Triton compiles per architecture
@needs_triton
def test_every_channel_tier_of_the_models_compiles_without_spills_in_at_most_128_registers():
  from pallas_kernels import report
  for case in report.tier_cases():
    for b in _aot.compile_function(case.fn, *case.args):
      if b.name.startswith(case.show):
        assert b.spill_stores == 0 and b.spill_loads == 0 and b.local == 0, (case.config, b)
        assert b.registers <= 128, (case.config, b)
        assert b.shared + b.shared_dynamic <= report._SM[b.arch]["smem"], (case.config, b)
        assert b.mma, (case.config, b)
