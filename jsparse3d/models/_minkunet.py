"""MinkUNet and SPVCNN: the SemanticKITTI networks of SPVNAS (torchsparse's reference architectures)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jsparse3d import nn
from jsparse3d import ops
from jsparse3d._sparse_tensor import SparseTensor

BASE_CHANNELS = (32, 32, 64, 128, 256, 256, 128, 96, 96)


def channels(cr: float) -> list[int]:
  """The nine stage widths scaled by ``cr`` (rounded down, as in SPVNAS)."""
  return [int(cr * c) for c in BASE_CHANNELS]


def _widths(cr: float, given) -> list[int]:
  """The nine widths: ``given`` when set, else ``channels(cr)``."""
  if given is None:
    return channels(cr)
  cs = [int(c) for c in given]
  if len(cs) != len(BASE_CHANNELS) or min(cs) < 1:
    raise ValueError(f"channels must be {len(BASE_CHANNELS)} positive widths (stem, four down stages, four up "
                     f"stages), got {given!r}; or leave it None and scale the defaults with cr.")
  return cs


def _stage_counts(blocks, name: str = "blocks") -> list[int]:
  """Residual blocks per stage (four down, then four up): an int for all, or eight counts."""
  counts = [int(blocks)] * 8 if isinstance(blocks, (int, float)) else [int(b) for b in blocks]
  if len(counts) != 8 or min(counts) < 1:
    raise ValueError(f"{name} must be a positive int or 8 positive counts (four down, four up stages), got "
                     f"{blocks!r}.")
  return counts


class ConvBNReLU(nnx.Module):
  """Sparse conv (no bias) + BN + ReLU; a transposed conv when ``transposed``."""

  def __init__(self, in_features, out_features, kernel_size, *, stride=1, transposed=False, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    layer = nn.SparseConvTranspose3d if transposed else nn.SparseConv3d
    self.conv = layer(in_features, out_features, kernel_size, stride=stride, **kw)
    self.bn = nn.BatchNorm(out_features, relu=True, **kw)

  def __call__(self, x: SparseTensor) -> SparseTensor:
    return self.bn(self.conv(x))


class ResidualBlock(nnx.Module):
  """conv 3^3 + BN + ReLU + conv 3^3 + BN, plus the input (through conv 1x1 + BN when channels change, or when
  ``project`` says so), then ReLU."""

  def __init__(self, in_features, out_features, *, project: bool | None = None, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = nn.SparseConv3d(in_features, out_features, 3, **kw)
    self.bn1 = nn.BatchNorm(out_features, relu=True, **kw)
    self.conv2 = nn.SparseConv3d(out_features, out_features, 3, **kw)
    self.bn2 = nn.BatchNorm(out_features, **kw)
    if project is False and in_features != out_features:
      raise ValueError(f"a residual block from {in_features} to {out_features} channels needs its projection; pass "
                       "project=None or True.")
    if project or in_features != out_features:
      self.proj = nn.SparseConv3d(in_features, out_features, 1, **kw)
      self.proj_bn = nn.BatchNorm(out_features, **kw)
    else:
      self.proj = self.proj_bn = None

  def __call__(self, x: SparseTensor) -> SparseTensor:
    h = self.bn2(self.conv2(self.bn1(self.conv1(x))))
    skip = x if self.proj is None else self.proj_bn(self.proj(x))
    return ops.relu(h.replace(feats=h.feats + skip.feats.astype(h.feats.dtype)))


class _Backbone(nnx.Module):
  """Stem, four down stages and four up stages; SPVCNN interleaves its point branch between them.

  ``cs``: the nine widths. ``blocks``: residual blocks of each of the eight stages. ``projections``: per stage,
  whether its first block projects its input (None: where the channels change)."""

  def __init__(self, in_features, cs, blocks, projections, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    blocks = _stage_counts(blocks)
    project = [None] * 8 if projections is None else [bool(p) for p in projections]
    if len(project) != 8:
      raise ValueError(f"projections must hold 8 flags (four down, four up stages), got {projections!r}.")
    def stage(first, in_ch, out_ch, s):
      rest = [ResidualBlock(out_ch, out_ch, **kw) for _ in range(blocks[s] - 1)]
      return nnx.List([first, ResidualBlock(in_ch, out_ch, project=project[s] or None, **kw), *rest])
    self.stem = nnx.List([ConvBNReLU(in_features, cs[0], 3, **kw), ConvBNReLU(cs[0], cs[0], 3, **kw)])
    self.stages = nnx.List()
    prev = cs[0]
    for i in range(4):
      self.stages.append(stage(ConvBNReLU(prev, prev, 2, stride=2, **kw), prev, cs[i + 1], i))
      prev = cs[i + 1]
    self.ups = nnx.List()
    skip_channels = (cs[3], cs[2], cs[1], cs[0])
    for j in range(4):
      out = cs[5 + j]
      self.ups.append(stage(ConvBNReLU(prev, out, 2, stride=2, transposed=True, **kw), out + skip_channels[j], out,
                            4 + j))
      prev = out

  @staticmethod
  def run(blocks, x):
    for block in blocks:
      x = block(x)
    return x

  def up(self, j, x, skip):
    x = self.ups[j][0](x)
    return self.run(self.ups[j][1:], ops.cat([x, skip]))


class MinkUNet(nnx.Module):
  """MinkUNet (SPVNAS): widths ``[32, 32, 64, 128, 256, 256, 128, 96, 96] * cr``, 19 classes by default.

  Stem: two conv 3^3 + BN + ReLU. Four stages of conv k2 s2 + BN + ReLU and two residual blocks; four up stages of
  transposed conv k2 s2 + BN + ReLU, skip concatenation and two residual blocks; conv biases off; a linear
  classifier. Parameters: 21,723,315 / 8,771,298 / 5,435,235 at cr 1.0 / 0.64 / 0.5 (4 inputs, 19 classes).

  ``channels`` (nine widths, overriding ``cr``), ``blocks`` (residual blocks per stage: an int or eight counts)
  and ``projections`` (eight flags: the first block of a stage projects its input even at equal widths) describe
  the subnets that :mod:`jsparse3d.nas` exports; the defaults are the published network.

  ``__call__(x)`` -> SparseTensor of per-voxel logits on ``x``'s coordinates.
  """

  def __init__(self, in_features: int = 4, num_classes: int = 19, cr: float = 1.0, *, channels=None, blocks=2,
               projections=None, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    cs = _widths(cr, channels)
    self.backbone = _Backbone(in_features, cs, blocks, projections, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.classifier = nn.Linear(cs[8], num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: SparseTensor) -> SparseTensor:
    b = self.backbone
    x0 = b.run(b.stem, x)
    skips = [x0]
    for stage in b.stages:
      skips.append(b.run(stage, skips[-1]))
    y = skips[4]
    for j in range(4):
      y = b.up(j, y, skips[3 - j])
    return self.classifier(y)


class PointBranch(nnx.Module):
  """Linear + BN + ReLU on point features (padded points stay zero)."""

  def __init__(self, in_features, out_features, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear = nn.Linear(in_features, out_features, **kw)
    self.bn = nn.BatchNorm(out_features, relu=True, **kw)

  def __call__(self, z, mask):
    return self.bn(self.linear(z, mask=mask), mask=mask)


class SPVCNN(nnx.Module):
  """SPVCNN (SPVNAS): MinkUNet plus a point branch at full resolution, fused at three depths.

  Points are voxelized (scatter mean), the stem runs, and features go back to the points by trilinear
  interpolation; after the encoder, after the second and after the fourth up stage the voxel features are read at
  the points and added to a Linear + BN + ReLU of the previous point features (widths cs4, cs6, cs8), then averaged
  back into voxels (with dropout 0.3 before the up stages). Logits are per point. Parameters: 21,778,003 /
  8,793,617 / 5,449,267 at cr 1.0 / 0.64 / 0.5.

  ``__call__(xyz, batch, feats)``: ``xyz`` float [P, 3] in voxel units, ``batch`` int32 [P] (-1 for padded points),
  ``feats`` [P, in_features] -> logits [P, num_classes] (zero on padded points). With ``embed_dim > 0`` a second
  Linear on the same point features gives per-point embeddings for clustering (the instance head of the
  calo-cluster study), and the call returns ``(logits, embeddings [P, embed_dim])``. ``channels``, ``blocks`` and
  ``projections`` as in :class:`MinkUNet`.
  """

  def __init__(self, in_features: int = 4, num_classes: int = 19, cr: float = 1.0, *, channels=None, blocks=2,
               projections=None, dropout: float = 0.3, embed_dim: int = 0, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    cs = _widths(cr, channels)
    self.backbone = _Backbone(in_features, cs, blocks, projections, **kw)
    self.points = nnx.List([PointBranch(cs[0], cs[4], **kw), PointBranch(cs[4], cs[6], **kw),
                            PointBranch(cs[6], cs[8], **kw)])
    self.dropout = nn.Dropout(dropout, rngs=rngs)
    self.classifier = nn.Linear(cs[8], num_classes, **kw)
    self.embedding = nn.Linear(cs[8], embed_dim, **kw) if embed_dim else None

  def __call__(self, xyz, batch, feats):
    b = self.backbone
    mask = batch >= 0
    x0, _ = ops.voxelize(xyz, batch, feats)
    x0 = b.run(b.stem, x0)
    z0 = ops.voxel_to_point(x0, xyz, batch)
    x1 = b.run(b.stages[0], ops.point_to_voxel(x0, xyz, batch, z0))
    x2 = b.run(b.stages[1], x1)
    x3 = b.run(b.stages[2], x2)
    x4 = b.run(b.stages[3], x3)
    z1 = ops.voxel_to_point(x4, xyz, batch) + self.points[0](z0, mask)
    y = self.dropout(ops.point_to_voxel(x4, xyz, batch, z1))
    y = b.up(0, y, x3)
    y = b.up(1, y, x2)
    z2 = ops.voxel_to_point(y, xyz, batch) + self.points[1](z1, mask)
    y = self.dropout(ops.point_to_voxel(y, xyz, batch, z2))
    y = b.up(2, y, x1)
    y = b.up(3, y, x0)
    z3 = ops.voxel_to_point(y, xyz, batch) + self.points[2](z2, mask)
    logits = self.classifier(z3, mask=mask)
    return logits if self.embedding is None else (logits, self.embedding(z3, mask=mask))
