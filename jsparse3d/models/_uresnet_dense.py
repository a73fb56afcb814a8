"""The dense twin of the sparse U-ResNet: the same topology and parameter count on dense voxel grids.

Its convolutions are ordinary ones (``lax.conv_general_dilated`` through ``nnx.Conv``): they spread activity into
empty voxels and their batch-norm statistics cover every voxel, as in the dense baseline of the LArTPC study.
Train it with the loss restricted to non-empty voxels (see :func:`nonempty_mask`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jsparse3d.models import _unet
from jsparse3d.nn._layers import he_normal


def nonempty_mask(grid):
  """``bool[B, D, H, W]``: voxels holding any non-zero input feature (where the loss is taken)."""
  return jnp.any(grid != 0, axis=-1)


def _conv(cin, cout, kernel, *, strided=False, dtype, param_dtype, rngs):
  """A bias-free convolution (``kernel`` a tuple, also the stride when ``strided``): 'SAME' at stride 1, 'VALID'
  when strided."""
  return nnx.Conv(cin, cout, kernel, strides=kernel if strided else 1, padding="VALID" if strided else "SAME",
                  use_bias=False, kernel_init=he_normal(math.prod(kernel) * cin), dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)


class _TransposedConv(nnx.Module):
  """The adjoint of a strided conv whose stride is its kernel (PyTorch's ConvTranspose, and the sparse twin's):
  input voxel ``c`` adds ``x[c] @ kernel[o]`` to output voxel ``stride * c + o``. (``nnx.ConvTranspose`` applies
  the spatially flipped kernel unless ``transpose_kernel``, which would also swap the kernel's channel axes.)"""

  def __init__(self, cin, cout, kernel, *, dtype, param_dtype, rngs):
    self.kernel = nnx.Param(he_normal(math.prod(kernel) * cin)(rngs.params(), (*kernel, cin, cout), param_dtype))
    self.dtype = dtype

  def __call__(self, x):
    kernel = self.kernel[...]
    dtype = self.dtype or jnp.result_type(x, kernel)
    space = "DHW"[3 - (x.ndim - 2):]
    return jax.lax.conv_transpose(x.astype(dtype), kernel.astype(dtype), strides=kernel.shape[:-2], padding="VALID",
                                  dimension_numbers=(f"N{space}C", f"{space}OI", f"N{space}C"), transpose_kernel=True)


class _Block(nnx.Module):
  def __init__(self, cin, cout, *, kernel, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn1 = nnx.BatchNorm(cin, momentum=0.9, **kw)
    self.conv1 = _conv(cin, cout, kernel, **kw)
    self.bn2 = nnx.BatchNorm(cout, momentum=0.9, **kw)
    self.conv2 = _conv(cout, cout, kernel, **kw)
    self.shortcut = _conv(cin, cout, (1,) * len(kernel), **kw) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(jax.nn.relu(self.bn1(x)))
    h = self.conv2(jax.nn.relu(self.bn2(h)))
    return h + (x if self.shortcut is None else self.shortcut(x))


class DenseUResNet(nnx.Module):
  """Dense U-ResNet with the arguments, topology (:mod:`jsparse3d.models._unet`) and parameter count of
  :class:`jsparse3d.models.UResNet`.

  ``__call__(grid)``: ``grid`` float [B, D, H, W, in_features] with D, H, W divisible by ``2 ** (depth - 1)`` ->
  logits [B, D, H, W, num_classes]; with ``spatial_dims=2``, images [B, H, W, in_features] and 2D convolutions
  (the sparse twin's 3x3x1 kernels without the z axis; the same parameter count).
  """

  state_dict_order = _unet.ORDER

  def __init__(self, in_features: int = 1, num_classes: int = 5, filters: int = 16, depth: int = 5, reps: int = 2, *,
               spatial_dims: int = 3, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.spatial_dims = spatial_dims
    _unet.build(self, _layers(kw, _unet.kernels(spatial_dims)), in_features, num_classes, filters, depth, reps)

  def __call__(self, grid):
    step = 2 ** (self.depth - 1)
    sides = grid.shape[1:1 + self.spatial_dims]
    if grid.ndim != self.spatial_dims + 2 or any(s % step for s in sides):
      raise ValueError(f"grid must be [B, {', '.join('DHW'[3 - self.spatial_dims:])}, C] with sides divisible by "
                       f"2 ** (depth - 1) = {step}, got shape {grid.shape}.")
    return _unet.apply(self, grid, norm_act=lambda norm, h: jax.nn.relu(norm(h)),
                       cat=lambda skip, h: jnp.concatenate([skip, h], axis=-1))


def _layers(kw, k: _unet.Kernels) -> _unet.Layers:
  """The dense twin's layers (``kw``: dtypes and rngs)."""
  conv, down = k.conv[:k.dims], k.down[:k.dims]
  return _unet.Layers(
      stem=lambda i, o: _conv(i, o, conv, **kw),
      block=lambda i, o: _Block(i, o, kernel=conv, **kw),
      norm=lambda ch: nnx.BatchNorm(ch, momentum=0.9, **kw),
      down=lambda i, o: _conv(i, o, down, strided=True, **kw),
      up=lambda i, o: _TransposedConv(i, o, down, **kw),
      head=lambda i, o: nnx.Linear(i, o, kernel_init=he_normal(i), **kw))
