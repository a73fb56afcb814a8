"""The sparse U-ResNet of the LArTPC semantic-segmentation study (submanifold convolutions throughout)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jsparse3d import nn
from jsparse3d import ops
from jsparse3d._sparse_tensor import SparseTensor
from jsparse3d.models import _unet


class PreActBlock(nnx.Module):
  """Pre-activation residual block: BN, ReLU, conv, BN, ReLU, conv (``kernel_size``, 3^3 by default), plus the
  input (through a 1x1 linear map without bias when the channel count changes)."""

  def __init__(self, in_features: int, out_features: int, *, kernel_size=3, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn1 = nn.BatchNorm(in_features, relu=True, **kw)
    self.conv1 = nn.SparseConv3d(in_features, out_features, kernel_size, **kw)
    self.bn2 = nn.BatchNorm(out_features, relu=True, **kw)
    self.conv2 = nn.SparseConv3d(out_features, out_features, kernel_size, **kw)
    self.shortcut = nn.Linear(in_features, out_features, use_bias=False, **kw) if in_features != out_features else None

  def __call__(self, x: SparseTensor) -> SparseTensor:
    h = self.conv1(self.bn1(x))
    h = self.conv2(self.bn2(h))
    skip = x if self.shortcut is None else self.shortcut(x)
    return h.replace(feats=h.feats + skip.feats.astype(h.feats.dtype))


class UResNet(nnx.Module):
  """Sparse U-ResNet: a U-Net of pre-activation residual blocks on submanifold convolutions (the topology of
  :mod:`jsparse3d.models._unet`, shared with :class:`DenseUResNet`).

  Level ``i`` has ``filters * (i + 1)`` channels. The encoder runs ``reps`` blocks per level and goes down with
  BN, ReLU, conv k2 s2; the decoder comes up with BN, ReLU, transposed conv k2 s2, concatenates the skip and runs
  ``reps`` blocks (the first halves the channels through its 1x1 shortcut). The stem is a submanifold 3^3 conv
  without bias; the head is BN, ReLU, Linear with bias. At the defaults it has 2,741,477 parameters.

  Args:
    in_features: input channels (1: deposited energy). num_classes: output classes.
    filters: channels of the first level (level ``i`` has ``filters * (i + 1)``), or a sequence of ``depth``
      widths, one per level (the subnets that :mod:`jsparse3d.nas` exports). depth: levels (the deepest stride is
      ``2 ** (depth - 1)``).
    reps: residual blocks per level and side, or a sequence of one count per level.
    spatial_dims: 3, or 2 for images on a flat z axis (coordinates ``z = 0``): 3x3x1 convolutions, 2x2x1 strides.
  Returns (``__call__``):
    a SparseTensor of ``num_classes`` logits per voxel, on the input's coordinates.
  """

  state_dict_order = _unet.ORDER

  def __init__(self, in_features: int = 1, num_classes: int = 5, filters=16, depth: int = 5, reps=2, *,
               spatial_dims: int = 3, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    _unet.build(self, _layers(kw, _unet.kernels(spatial_dims)), in_features, num_classes, filters, depth, reps)

  def __call__(self, x: SparseTensor) -> SparseTensor:
    return _unet.apply(self, x, norm_act=lambda norm, h: norm(h), cat=lambda skip, h: ops.cat([skip, h]))


def _layers(kw, k: _unet.Kernels) -> _unet.Layers:
  """The sparse twin's layers (``kw``: dtypes and rngs); its norms fuse the ReLU."""
  return _unet.Layers(
      stem=lambda i, o: nn.SparseConv3d(i, o, k.conv, **kw),
      block=lambda i, o: PreActBlock(i, o, kernel_size=k.conv, **kw),
      norm=lambda ch: nn.BatchNorm(ch, relu=True, **kw),
      down=lambda i, o: nn.SparseConv3d(i, o, k.down, stride=k.down, **kw),
      up=lambda i, o: nn.SparseConvTranspose3d(i, o, k.down, stride=k.down, **kw),
      head=lambda i, o: nn.Linear(i, o, use_bias=True, **kw))
