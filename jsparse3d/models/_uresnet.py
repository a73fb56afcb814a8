"""The sparse U-ResNet of the LArTPC semantic-segmentation study (submanifold convolutions throughout)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jsparse3d import nn
from jsparse3d import ops
from jsparse3d._sparse_tensor import SparseTensor


class PreActBlock(nnx.Module):
  """Pre-activation residual block: BN, ReLU, conv 3^3, BN, ReLU, conv 3^3, plus the input (through a 1x1 linear
  map without bias when the channel count changes)."""

  def __init__(self, in_features: int, out_features: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn1 = nn.BatchNorm(in_features, relu=True, **kw)
    self.conv1 = nn.SparseConv3d(in_features, out_features, 3, **kw)
    self.bn2 = nn.BatchNorm(out_features, relu=True, **kw)
    self.conv2 = nn.SparseConv3d(out_features, out_features, 3, **kw)
    self.shortcut = nn.Linear(in_features, out_features, use_bias=False, **kw) if in_features != out_features else None

  def __call__(self, x: SparseTensor) -> SparseTensor:
    h = self.conv1(self.bn1(x))
    h = self.conv2(self.bn2(h))
    skip = x if self.shortcut is None else self.shortcut(x)
    return h.replace(feats=h.feats + skip.feats.astype(h.feats.dtype))


class UResNet(nnx.Module):
  """Sparse U-ResNet: a U-Net of pre-activation residual blocks on submanifold convolutions.

  Level ``i`` has ``filters * (i + 1)`` channels. The encoder runs ``reps`` blocks per level and goes down with
  BN, ReLU, conv k2 s2; the decoder comes up with BN, ReLU, transposed conv k2 s2, concatenates the skip and runs
  ``reps`` blocks (the first halves the channels through its 1x1 shortcut). The stem is a submanifold 3^3 conv
  without bias; the head is BN, ReLU, Linear with bias. At the defaults it has 2,741,477 parameters.

  Args:
    in_features: input channels (1: deposited energy). num_classes: output classes.
    filters: channels of the first level. depth: levels (the deepest stride is ``2 ** (depth - 1)``).
    reps: residual blocks per level and side.
  Returns (``__call__``):
    a SparseTensor of ``num_classes`` logits per voxel, on the input's coordinates.
  """

  def __init__(self, in_features: int = 1, num_classes: int = 5, filters: int = 16, depth: int = 5, reps: int = 2, *,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if depth < 1 or reps < 1 or filters < 1:
      raise ValueError(f"depth, reps and filters must be positive, got {depth}, {reps}, {filters}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    c = [filters * (i + 1) for i in range(depth)]
    self.depth = depth
    self.stem = nn.SparseConv3d(in_features, c[0], 3, **kw)
    self.encoder = nnx.List([nnx.List([PreActBlock(c[i], c[i], **kw) for _ in range(reps)]) for i in range(depth)])
    self.down_bn = nnx.List([nn.BatchNorm(c[i], relu=True, **kw) for i in range(depth - 1)])
    self.down = nnx.List([nn.SparseConv3d(c[i], c[i + 1], 2, stride=2, **kw) for i in range(depth - 1)])
    self.up_bn = nnx.List([nn.BatchNorm(c[i + 1], relu=True, **kw) for i in range(depth - 1)])
    self.up = nnx.List([nn.SparseConvTranspose3d(c[i + 1], c[i], 2, stride=2, **kw) for i in range(depth - 1)])
    self.decoder = nnx.List([nnx.List([PreActBlock(2 * c[i] if r == 0 else c[i], c[i], **kw) for r in range(reps)])
                             for i in range(depth - 1)])
    self.head_bn = nn.BatchNorm(c[0], relu=True, **kw)
    self.head = nn.Linear(c[0], num_classes, use_bias=True, **kw)

  def __call__(self, x: SparseTensor) -> SparseTensor:
    x = self.stem(x)
    skips = []
    for i in range(self.depth):
      for block in self.encoder[i]:
        x = block(x)
      if i < self.depth - 1:
        skips.append(x)
        x = self.down[i](self.down_bn[i](x))
    for i in reversed(range(self.depth - 1)):
      x = self.up[i](self.up_bn[i](x))
      x = ops.cat([skips[i], x])
      for block in self.decoder[i]:
        x = block(x)
    return self.head(self.head_bn(x))
