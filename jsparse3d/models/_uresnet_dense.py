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

from jsparse3d.nn import _macs


def nonempty_mask(grid):
  """``bool[B, D, H, W]``: voxels holding any non-zero input feature (where the loss is taken)."""
  return jnp.any(grid != 0, axis=-1)


class _Conv(nnx.Module):
  """nnx.Conv without bias that reports its MACs (every output voxel counts)."""

  def __init__(self, cin, cout, k, *, stride=1, transposed=False, dtype, param_dtype, rngs):
    kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if transposed:
      self.conv = nnx.ConvTranspose(cin, cout, (k,) * 3, strides=(stride,) * 3, padding="VALID", **kw)
    else:
      self.conv = nnx.Conv(cin, cout, (k,) * 3, strides=(stride,) * 3, padding="SAME" if stride == 1 else "VALID",
                           **kw)
    self.k, self.cin, self.cout, self.transposed = k, cin, cout, transposed

  def __call__(self, x):
    y = self.conv(x)
    # A transposed conv does its MACs per input voxel; an ordinary one per output voxel.
    voxels = math.prod((x if self.transposed else y).shape[:4])
    _macs.record("dense_conv", voxels * self.k ** 3 * self.cin * self.cout)
    return y


class _Block(nnx.Module):
  def __init__(self, cin, cout, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn1 = nnx.BatchNorm(cin, momentum=0.9, **kw)
    self.conv1 = _Conv(cin, cout, 3, **kw)
    self.bn2 = nnx.BatchNorm(cout, momentum=0.9, **kw)
    self.conv2 = _Conv(cout, cout, 3, **kw)
    self.shortcut = _Conv(cin, cout, 1, **kw) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(jax.nn.relu(self.bn1(x)))
    h = self.conv2(jax.nn.relu(self.bn2(h)))
    return h + (x if self.shortcut is None else self.shortcut(x))


class DenseUResNet(nnx.Module):
  """Dense U-ResNet with the arguments and parameter count of :class:`jsparse3d.models.UResNet`.

  ``__call__(grid)``: ``grid`` float [B, D, H, W, in_features] with D, H, W divisible by ``2 ** (depth - 1)`` ->
  logits [B, D, H, W, num_classes].
  """

  def __init__(self, in_features: int = 1, num_classes: int = 5, filters: int = 16, depth: int = 5, reps: int = 2, *,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    c = [filters * (i + 1) for i in range(depth)]
    self.depth = depth
    self.stem = _Conv(in_features, c[0], 3, **kw)
    self.encoder = nnx.List([nnx.List([_Block(c[i], c[i], **kw) for _ in range(reps)]) for i in range(depth)])
    self.down_bn = nnx.List([nnx.BatchNorm(c[i], momentum=0.9, **kw) for i in range(depth - 1)])
    self.down = nnx.List([_Conv(c[i], c[i + 1], 2, stride=2, **kw) for i in range(depth - 1)])
    self.up_bn = nnx.List([nnx.BatchNorm(c[i + 1], momentum=0.9, **kw) for i in range(depth - 1)])
    self.up = nnx.List([_Conv(c[i + 1], c[i], 2, stride=2, transposed=True, **kw) for i in range(depth - 1)])
    self.decoder = nnx.List([nnx.List([_Block(2 * c[i] if r == 0 else c[i], c[i], **kw) for r in range(reps)])
                             for i in range(depth - 1)])
    self.head_bn = nnx.BatchNorm(c[0], momentum=0.9, **kw)
    self.head = nnx.Linear(c[0], num_classes, **kw)

  def __call__(self, grid):
    step = 2 ** (self.depth - 1)
    if any(s % step for s in grid.shape[1:4]):
      raise ValueError(f"grid sides {grid.shape[1:4]} must be divisible by 2 ** (depth - 1) = {step}.")
    x = self.stem(grid)
    skips = []
    for i in range(self.depth):
      for block in self.encoder[i]:
        x = block(x)
      if i < self.depth - 1:
        skips.append(x)
        x = self.down[i](jax.nn.relu(self.down_bn[i](x)))
    for i in reversed(range(self.depth - 1)):
      x = self.up[i](jax.nn.relu(self.up_bn[i](x)))
      x = jnp.concatenate([skips[i], x], axis=-1)
      for block in self.decoder[i]:
        x = block(x)
    return self.head(jax.nn.relu(self.head_bn(x)))
