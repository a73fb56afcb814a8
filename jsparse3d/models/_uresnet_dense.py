"""The dense twin of the sparse U-ResNet: the same topology and parameter count on dense voxel grids.

Its convolutions are ordinary ones (``lax.conv_general_dilated`` through ``nnx.Conv``): they spread activity into
empty voxels and their batch-norm statistics cover every voxel, as in the dense baseline of the LArTPC study.
Train it with the loss restricted to non-empty voxels (see :func:`nonempty_mask`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsparse3d.models import _unet


def nonempty_mask(grid):
  """``bool[B, D, H, W]``: voxels holding any non-zero input feature (where the loss is taken)."""
  return jnp.any(grid != 0, axis=-1)


def _conv(cin, cout, k, *, stride=1, transposed=False, dtype, param_dtype, rngs):
  """A bias-free ``k``-cube convolution: 'SAME' at stride 1, 'VALID' when strided or transposed."""
  kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if transposed:
    return nnx.ConvTranspose(cin, cout, (k,) * 3, strides=(stride,) * 3, padding="VALID", **kw)
  return nnx.Conv(cin, cout, (k,) * 3, strides=(stride,) * 3, padding="SAME" if stride == 1 else "VALID", **kw)


class _Block(nnx.Module):
  def __init__(self, cin, cout, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn1 = nnx.BatchNorm(cin, momentum=0.9, **kw)
    self.conv1 = _conv(cin, cout, 3, **kw)
    self.bn2 = nnx.BatchNorm(cout, momentum=0.9, **kw)
    self.conv2 = _conv(cout, cout, 3, **kw)
    self.shortcut = _conv(cin, cout, 1, **kw) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(jax.nn.relu(self.bn1(x)))
    h = self.conv2(jax.nn.relu(self.bn2(h)))
    return h + (x if self.shortcut is None else self.shortcut(x))


class DenseUResNet(nnx.Module):
  """Dense U-ResNet with the arguments, topology (:mod:`jsparse3d.models._unet`) and parameter count of
  :class:`jsparse3d.models.UResNet`.

  ``__call__(grid)``: ``grid`` float [B, D, H, W, in_features] with D, H, W divisible by ``2 ** (depth - 1)`` ->
  logits [B, D, H, W, num_classes].
  """

  state_dict_order = _unet.ORDER

  def __init__(self, in_features: int = 1, num_classes: int = 5, filters: int = 16, depth: int = 5, reps: int = 2, *,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    _unet.build(self, _layers(kw), in_features, num_classes, filters, depth, reps)

  def __call__(self, grid):
    step = 2 ** (self.depth - 1)
    if any(s % step for s in grid.shape[1:4]):
      raise ValueError(f"grid sides {grid.shape[1:4]} must be divisible by 2 ** (depth - 1) = {step}.")
    return _unet.apply(self, grid, norm_act=lambda norm, h: jax.nn.relu(norm(h)),
                       cat=lambda skip, h: jnp.concatenate([skip, h], axis=-1))


def _layers(kw) -> _unet.Layers:
  """The dense twin's layers (``kw``: dtypes and rngs)."""
  return _unet.Layers(
      stem=lambda i, o: _conv(i, o, 3, **kw),
      block=lambda i, o: _Block(i, o, **kw),
      norm=lambda ch: nnx.BatchNorm(ch, momentum=0.9, **kw),
      down=lambda i, o: _conv(i, o, 2, stride=2, **kw),
      up=lambda i, o: _conv(i, o, 2, stride=2, transposed=True, **kw),
      head=lambda i, o: nnx.Linear(i, o, **kw))
