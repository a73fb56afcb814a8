"""Flax NNX layers on SparseTensors: convolutions, masked batch norm, linear maps and dropout on features.

Every layer keeps padded rows exactly zero, takes ``rngs`` keyword-only, and separates the parameter dtype
(``param_dtype``, float32 by default) from the compute dtype (``dtype``; None computes in the input's dtype).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jsparse3d import _coords
from jsparse3d import _macs
from jsparse3d import ops
from jsparse3d._sparse_tensor import SparseTensor
from jsparse3d.ops import _batch_norm


def _zero_padding(x: SparseTensor, feats) -> SparseTensor:
  return x.replace(feats=jnp.where(x.valid_mask[:, None], feats, jnp.zeros((), feats.dtype)))


# Compile options of a program that runs once (drawing weights, building a model): no LLVM optimisations. XLA:CPU
# spends about 1 s optimising the random-bit generator of each weight shape, 0.2 s without (a UResNet is built in
# 5 s, not 20 s, when nothing is cached yet). The values are the same draws to the last bit or two of the float32
# normal transform. The trainer builds its models under these options too (train/tasks.py).
ONE_SHOT_COMPILE = {"xla_backend_optimization_level": 0}


def _scaled_normal(key, shape, dtype, std):
  return jax.random.normal(key, shape, dtype) * std


_scaled_normal_once = jax.jit(_scaled_normal, static_argnums=(1, 2), compiler_options=ONE_SHOT_COMPILE)


def he_normal(fan_in: int):
  """He-normal for ReLU networks, with the fan-in of a kernel (all offsets x input channels): every layer of the
  library's models draws with it, the dense U-ResNet's too, so that the two twins start from the same weights."""
  std = math.sqrt(2.0 / max(fan_in, 1))
  def init(key, shape, dtype):
    if isinstance(key, jax.core.Tracer):  # inside the caller's jit, under its compile options
      return _scaled_normal(key, shape, dtype, std)
    return _scaled_normal_once(key, tuple(shape), dtype, std)
  return init


class SparseConv3d(nnx.Module):
  """Sparse 3D convolution (submanifold at stride 1, strided otherwise); see :func:`jsparse3d.ops.conv3d`.

  Args:
    in_features, out_features: channels. kernel_size: int or 3 ints (1..7).
    stride: 1..4. dilation: 1..3. use_bias: add a bias on valid rows.
    dtype: compute dtype (None: the input's). param_dtype: parameter dtype. implementation: as in conv3d.
  Attributes:
    kernel: ``[kx, ky, kz, in_features, out_features]``. bias: ``[out_features]`` or None.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size, *, stride=1, dilation=1,
               use_bias: bool = False, dtype=None, param_dtype=jnp.float32, implementation: str | None = None,
               rngs: nnx.Rngs):
    ks = _coords.as_triple(kernel_size, "kernel_size")
    self.stride, self.dilation = stride, dilation
    self.dtype, self.implementation = dtype, implementation
    shape = (*ks, in_features, out_features)
    self.kernel = nnx.Param(he_normal(math.prod(ks) * in_features)(rngs.params(), shape, param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None

  def __call__(self, x: SparseTensor) -> SparseTensor:
    dtype = self.dtype or x.feats.dtype
    bias = None if self.bias is None else self.bias[...].astype(dtype)
    return ops.conv3d(x.replace(feats=x.feats.astype(dtype)), self.kernel[...].astype(dtype), stride=self.stride,
                      dilation=self.dilation, bias=bias, implementation=self.implementation)


class SparseConvTranspose3d(nnx.Module):
  """Transposed sparse convolution back to a finer tensor; see :func:`jsparse3d.ops.conv_transpose3d`.

  ``__call__(x, target=None)``: ``target`` is optional when ``x`` comes from a strided op (its parent is cached).
  ``stride`` and ``dilation`` are those of the conv it undoes.
  Attributes: kernel ``[kx, ky, kz, in_features (coarse), out_features (fine)]``, bias or None.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size, *, stride=2, dilation=1,
               use_bias: bool = False, dtype=None, param_dtype=jnp.float32, implementation: str | None = None,
               rngs: nnx.Rngs):
    ks = _coords.as_triple(kernel_size, "kernel_size")
    self.stride, self.dilation, self.dtype, self.implementation = stride, dilation, dtype, implementation
    shape = (*ks, in_features, out_features)
    self.kernel = nnx.Param(he_normal(math.prod(ks) * in_features)(rngs.params(), shape, param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None

  def __call__(self, x: SparseTensor, target: SparseTensor | None = None) -> SparseTensor:
    dtype = self.dtype or x.feats.dtype
    bias = None if self.bias is None else self.bias[...].astype(dtype)
    return ops.conv_transpose3d(x.replace(feats=x.feats.astype(dtype)), self.kernel[...].astype(dtype),
                                stride=self.stride, dilation=self.dilation, target=target, bias=bias,
                                implementation=self.implementation)


class BatchNorm(nnx.Module):
  """Batch normalization over valid rows only (padded rows neither enter the statistics nor leave zeros),
  optionally followed by a ReLU in the same pass.

  Works on a SparseTensor (its valid rows) or on a ``[N, C]`` array with ``mask`` (``bool[N]``). Training mode
  updates the running averages (PyTorch's momentum 0.1 is ``momentum=0.9`` here); ``use_running_average=True``
  (or :func:`flax.nnx.Module.eval`) normalizes with them. ``relu=True`` is ``ops.relu(bn(x))`` fused: on a CPU
  the forward and backward are one native call each (:mod:`jsparse3d.ops._batch_norm`).

  With ``axis_name`` (under ``jax.pmap`` or ``shard_map``) the statistics are those of the valid rows of all
  devices together: sums and counts are ``psum``-ed, so devices holding different numbers of voxels still agree
  with one device holding the whole batch. Statistics are float32 (float64 for float64 inputs) whatever the
  compute dtype; the variance is the biased one (as PyTorch's normalisation and flax's running average use).

  Args:
    num_features: channels C. momentum, epsilon: of the running averages and the variance.
    relu: apply a ReLU after the normalization. dtype: kept for flax's signature; the output has the input's
      dtype. param_dtype: of the scale, bias and running averages. axis_name: see above. implementation:
      ``"native"``, ``"xla"`` or None (native on a CPU).
  Example:
    >>> bn = jsparse3d.nn.BatchNorm(32, relu=True, rngs=nnx.Rngs(0))
    >>> y = bn(x)   # x: a SparseTensor with 32 channels
    >>> bool(jnp.all(y.feats >= 0)) and bool(jnp.all(y.feats[~x.valid_mask] == 0))
    True
  """

  def __init__(self, num_features: int, *, momentum: float = 0.9, epsilon: float = 1e-5, relu: bool = False,
               dtype=None, param_dtype=jnp.float32, axis_name: str | None = None,
               implementation: str | None = None, rngs: nnx.Rngs):
    # flax's module holds the parameters and running statistics (and the settings sync_batch_norm edits).
    self.norm = nnx.BatchNorm(num_features, momentum=momentum, epsilon=epsilon, dtype=dtype,
                              param_dtype=param_dtype, axis_name=axis_name, rngs=rngs)
    self.relu, self.implementation = relu, implementation

  def __call__(self, x, *, mask=None, use_running_average: bool | None = None):
    if isinstance(x, SparseTensor):
      return x.replace(feats=self._norm(x.feats, x.valid_mask, use_running_average))
    if mask is None:
      raise ValueError("BatchNorm on a plain array needs mask= (bool [N], True on valid rows); pass a SparseTensor "
                       "to use its valid rows.")
    return self._norm(x, mask, use_running_average)

  def _norm(self, x, mask, use_running_average):
    bn = self.norm
    stat = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    scale = jnp.ones(x.shape[1:], stat) if bn.scale is None else bn.scale[...].astype(stat)
    bias = jnp.zeros(x.shape[1:], stat) if bn.bias is None else bn.bias[...].astype(stat)
    if use_running_average is None:
      use_running_average = bn.use_running_average
    if not use_running_average and bn.axis_name is None:
      y, mean, var = _batch_norm.batch_norm(x, mask, scale, bias, epsilon=bn.epsilon, relu=self.relu,
                                            implementation=self.implementation)
      self._update_averages(mean, var)
      return y.astype(x.dtype)
    if use_running_average:
      mean, var = bn.mean[...].astype(stat), bn.var[...].astype(stat)
    else:  # statistics of the valid rows of every device
      xf = jnp.where(mask[:, None], x.astype(stat), 0)
      sums, count = jax.lax.psum((jnp.stack([jnp.sum(xf, axis=0), jnp.sum(xf * xf, axis=0)]),
                                  jnp.sum(mask).astype(stat)), bn.axis_name)
      count = jnp.maximum(count, 1)  # no valid rows: zero statistics, not NaN
      mean = sums[0] / count
      var = jnp.maximum(sums[1] / count - mean * mean, 0)
      self._update_averages(mean, var)
    a = jax.lax.rsqrt(var + bn.epsilon) * scale
    z = x.astype(stat) * a[None] + (bias - mean * a)[None]
    z = jnp.maximum(z, 0) if self.relu else z
    return jnp.where(mask[:, None], z, 0).astype(x.dtype)

  def _update_averages(self, mean, var):
    bn, m = self.norm, self.norm.momentum
    # set_value, not `[...] =`: the indexed form asks the traced value for its sharding, and building that
    # error message walks the whole jaxpr (about 1 s of tracing per U-ResNet step).
    bn.mean.set_value(jax.lax.stop_gradient(m * bn.mean[...] + (1 - m) * mean.astype(bn.mean.dtype)))
    bn.var.set_value(jax.lax.stop_gradient(m * bn.var[...] + (1 - m) * var.astype(bn.var.dtype)))


def sync_batch_norm(module: nnx.Module, axis_name: str | None) -> nnx.Module:
  """Sets ``axis_name`` on every batch norm in ``module`` (in place; returns it), for data-parallel training.

  The analogue of PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``: call it before ``nnx.split`` and run the
  model under ``jax.pmap(..., axis_name=axis_name)``; ``None`` makes the statistics per-device again. Sparse
  batch norms then sum over the valid rows of all devices; flax's dense ``nnx.BatchNorm`` (PVCNN, the dense
  U-ResNet) averages the per-device means, which is the same thing there since every device holds equal counts.
  """
  for _, m in nnx.iter_modules(module):
    if isinstance(m, nnx.BatchNorm):
      m.axis_name = axis_name
  return module


class Linear(nnx.Module):
  """A dense layer on the features of each row (a 1x1x1 convolution without the kernel map)."""

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                             kernel_init=he_normal(in_features), rngs=rngs)

  def __call__(self, x, *, mask=None):
    if isinstance(x, SparseTensor):
      _macs.record("linear", x.num_valid * self.linear.in_features * self.linear.out_features)
      with _macs.counted_by_op():
        return _zero_padding(x, self.linear(x.feats))
    if mask is None:  # every row is real: the jaxpr count sees it
      return self.linear(x)
    _macs.record("linear", mask.sum() * self.linear.in_features * self.linear.out_features)
    with _macs.counted_by_op():
      out = self.linear(x)
    return jnp.where(mask[:, None], out, jnp.zeros((), out.dtype))


class Dropout(nnx.Module):
  """Dropout on features (padded rows stay zero). Deterministic in eval mode."""

  def __init__(self, rate: float, *, rngs: nnx.Rngs | None = None):
    self.dropout = nnx.Dropout(rate, rngs=rngs)

  def __call__(self, x, *, deterministic: bool | None = None):
    if isinstance(x, SparseTensor):
      return x.replace(feats=self.dropout(x.feats, deterministic=deterministic))
    return self.dropout(x, deterministic=deterministic)
