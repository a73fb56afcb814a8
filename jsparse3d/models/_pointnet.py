"""PointNet (Qi et al., CVPR 2017) for part segmentation: the point-only baseline of the PVCNN study.

Every point passes through the same MLPs; a max over the points gives the global feature. Learned alignments
(T-Nets) transform the input and the 128-channel features. The layers are those of PVCNN's reference baseline
(the published PointNet part-segmentation network), so the parameter count matches it; the skeleton is PVCNN's
with shared MLPs in place of the point-voxel convolutions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsparse3d.models._pvcnn import PART_HEAD
from jsparse3d.models._pvcnn import SharedMLP
from jsparse3d.models._pvcnn import check_shape_one_hot
from jsparse3d.models._pvcnn import part_features
from jsparse3d.models._pvcnn import segmentation_head

# (out channels, repeats, a T-Net before the first): 64, 128, 128, 512, 2048 channels
BLOCKS = ((64, 1, True), (128, 2, False), (512, 1, True), (2048, 1, False))


class TNet(nnx.Module):
  """A learned ``C x C`` alignment of ``[B, N, C]`` features: shared MLP (64, 128, 1024), max over the points,
  Linear + BN + ReLU (512, 256), then a Linear to the matrix, added to the identity. The last Linear starts at zero,
  so the alignment starts as the identity."""

  def __init__(self, channels: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.channels = channels
    self.features = nnx.List([SharedMLP(a, b, **kw) for a, b in ((channels, 64), (64, 128), (128, 1024))])
    self.fc = nnx.List([nnx.Linear(1024, 512, **kw), nnx.BatchNorm(512, momentum=0.9, **kw),
                        nnx.Linear(512, 256, **kw), nnx.BatchNorm(256, momentum=0.9, **kw)])
    self.matrix = nnx.Linear(256, channels * channels, kernel_init=nnx.initializers.zeros, **kw)

  def __call__(self, x):
    h = x
    for layer in self.features:
      h = layer(h)
    g = h.max(axis=1)
    for i in range(0, 4, 2):
      g = jax.nn.relu(self.fc[i + 1](self.fc[i](g)))
    t = self.matrix(g).reshape(-1, self.channels, self.channels) + jnp.eye(self.channels, dtype=g.dtype)[None]
    return jnp.einsum("bij,bnj->bni", t, x)


class PointNet(nnx.Module):
  """PointNet part segmentation on fixed-size clouds ``[B, N, in_features]``.

  Shared MLPs of 64, 128, 128, 512 and 2048 channels (a T-Net before the 64 and before the 512), the 2048-channel
  max over the points, then a head on every point's concatenated features (the object's one-hot category, each
  layer's output, the global feature): shared MLPs of 256, 256, 128 with dropout 0.2 after the first two, and a
  Linear to the part logits. 8,342,395 parameters with 3 input features (xyz) and the T-Nets: the published
  network, the 8.3 M other papers quote for it. 8,349,718 with normals too (6 features); 2,519,858 without the
  T-Nets (``transforms=False``, the PVCNN repository's default baseline).

  ``__call__(points, shape_one_hot)``: ``points`` float [B, N, in_features] (xyz first), ``shape_one_hot`` float
  [B, num_shapes]. Returns logits [B, N, num_classes].

  Example:
    >>> net = PointNet(in_features=6, width=0.125, rngs=nnx.Rngs(0))
    >>> points = jax.random.normal(jax.random.key(0), (2, 256, 6))
    >>> net(points, jax.nn.one_hot(jnp.array([0, 3]), 16)).shape
    (2, 256, 50)
  """

  def __init__(self, num_classes: int = 50, *, in_features: int = 3, num_shapes: int = 16, transforms: bool = True,
               width: float = 1.0, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_shapes = num_shapes
    layers, cin, concat = [], in_features, 0
    for out, repeats, aligned in BLOCKS:
      out = int(width * out)
      for i in range(repeats):
        align = TNet(cin, **kw) if transforms and aligned and i == 0 else None
        layers.append(nnx.List([align, SharedMLP(cin, out, **kw)]))
        cin, concat = out, concat + out
    self.blocks = nnx.List(layers)
    self.head, self.classifier = segmentation_head(num_shapes + cin + concat, PART_HEAD, width, num_classes, **kw)

  def __call__(self, points, shape_one_hot):
    check_shape_one_hot(shape_one_hot, self.num_shapes)
    feats, outs = points, []
    for align, mlp in self.blocks:
      feats = mlp(feats if align is None else align(feats))
      outs.append(feats)
    h = part_features(outs, shape_one_hot, self.num_shapes)
    for layer in self.head:
      h = layer(h)
    return self.classifier(h)
