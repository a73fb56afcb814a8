"""PVCNN: point-voxel convolution networks for part segmentation (ShapeNet), indoor scenes (S3DIS) and calorimeter
hits (HGCAL-style noise and shower-type segmentation).

Dense, with point sets ``[B, N, C]`` (padded, with a point mask, where their sizes differ): each PVConv averages the
points into an ``r^3`` grid, runs two conv 3^3 + BN + LeakyReLU there (optionally squeeze-excite), reads the grid
back at every point by trilinear interpolation and adds a shared MLP of the point features. The layer choices
(PyTorch defaults included: convs with bias, BN over every grid cell) follow the reference implementation, so
parameter counts match it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsparse3d import ops

BLOCKS = {
    "shapenet_part": ((64, 1, 32), (128, 2, 16), (512, 1, None), (2048, 1, None)),
    "s3dis": ((64, 1, 32), (64, 2, 16), (128, 1, 16), (1024, 1, None)),
    "calo": ((64, 1, 16), (64, 2, 8), (128, 1, 8), (1024, 1, None)),
}


class SharedMLP(nnx.Module):
  """Per-point Linear (with bias) + BN + ReLU on ``[B, N, C]``."""

  def __init__(self, in_features, out_features, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn = nnx.BatchNorm(out_features, momentum=0.9, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, mask=None):
    return jax.nn.relu(self.bn(self.linear(x), mask=None if mask is None else mask[..., None]))


PART_HEAD = (256, 0.2, 256, 0.2, 128)  # the part-segmentation head: shared MLP widths and dropout rates


def segmentation_head(head_in: int, spec, width: float, num_classes: int, *, dtype=None, param_dtype=jnp.float32,
                      rngs: nnx.Rngs):
  """The per-point head ``(layers, classifier)``: a shared MLP per width in ``spec`` (times ``width``), a dropout
  per rate (the entries below 1), then a Linear to ``num_classes``."""
  kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  layers = []
  for item in spec:
    if item < 1:
      layers.append(nnx.Dropout(item, rngs=rngs))
    else:
      layers.append(SharedMLP(head_in, int(width * item), **kw))
      head_in = int(width * item)
  return nnx.List(layers), nnx.Linear(head_in, num_classes, **kw)


def check_shape_one_hot(shape_one_hot, num_shapes: int) -> None:
  """Part segmentation's second input, checked before any layer runs."""
  if shape_one_hot is None or shape_one_hot.ndim != 2 or shape_one_hot.shape[-1] != num_shapes:
    got = None if shape_one_hot is None else tuple(shape_one_hot.shape)
    raise ValueError(f"part segmentation needs shape_one_hot [B, {num_shapes}], the object category of each cloud "
                     f"(collate_shapes makes it); got {got}.")


def masked_max(feats, mask=None):
  """``[B, C]``: the max of ``feats`` [B, N, C] over the points where ``mask`` [B, N] is True (all if None; 0 for a
  set with no point)."""
  if mask is None:
    return feats.max(axis=1)
  pooled = jnp.where(mask[..., None], feats, -jnp.inf).max(axis=1)
  return jnp.where(mask.any(axis=1)[:, None], pooled, jnp.zeros((), feats.dtype))  # an empty set pools to 0


def part_features(outs, shape_one_hot, num_shapes: int, *, mask=None):
  """``[B, N, C]``: the object's one-hot category, every layer's output in ``outs`` and the max over the (unmasked)
  points of the last one, side by side at every point (the input of a part-segmentation head)."""
  last = outs[-1]
  b, n, _ = last.shape
  pooled = masked_max(last, mask)
  return jnp.concatenate([jnp.broadcast_to(shape_one_hot[:, None, :].astype(last.dtype), (b, n, num_shapes)), *outs,
                          jnp.broadcast_to(pooled[:, None, :], (b, n, pooled.shape[-1]))], axis=-1)


class SqueezeExcite(nnx.Module):
  """Channel gates from the grid mean: Linear(C, C/8) + ReLU + Linear(C/8, C) + sigmoid, no biases."""

  def __init__(self, features, reduction=8, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = nnx.Linear(features, features // reduction, **kw)
    self.fc2 = nnx.Linear(features // reduction, features, **kw)

  def __call__(self, grid):
    gate = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(grid.mean(axis=(1, 2, 3))))))
    return grid * gate[:, None, None, None, :]


class PVConv(nnx.Module):
  """Point-voxel convolution: a voxel branch at resolution ``r`` plus a point branch, fused by addition."""

  def __init__(self, in_features, out_features, resolution, *, with_se=False, normalize=True, centre=True, eps=0.0,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resolution, self.normalize, self.centre, self.eps = resolution, normalize, centre, eps
    self.conv1 = nnx.Conv(in_features, out_features, (3, 3, 3), padding="SAME", **kw)
    self.bn1 = nnx.BatchNorm(out_features, momentum=0.9, epsilon=1e-4, **kw)
    self.conv2 = nnx.Conv(out_features, out_features, (3, 3, 3), padding="SAME", **kw)
    self.bn2 = nnx.BatchNorm(out_features, momentum=0.9, epsilon=1e-4, **kw)
    self.se = SqueezeExcite(out_features, **kw) if with_se else None
    self.point = SharedMLP(in_features, out_features, **kw)

  def __call__(self, feats, xyz, mask=None):
    r = self.resolution
    coords, vox = ops.normalize_dense_coords(xyz, r, normalize=self.normalize, eps=self.eps, centre=self.centre,
                                             mask=mask)
    grid = ops.avg_voxelize_dense(feats, vox, r, mask=mask)
    grid = jax.nn.leaky_relu(self.bn1(self.conv1(grid)), 0.1)
    grid = jax.nn.leaky_relu(self.bn2(self.conv2(grid)), 0.1)
    if self.se is not None:
      grid = self.se(grid)
    return ops.trilinear_devoxelize_dense(grid, coords) + self.point(feats, mask)


class PVCNN(nnx.Module):
  """PVCNN for ``task="shapenet_part"`` (50 part classes, 16 shape classes, xyz + normals; squeeze-excite, no
  coordinate normalisation), ``"s3dis"`` (13 classes, 9 input features; a global cloud feature) or ``"calo"``
  (S3DIS's network at half its voxel resolution on calorimeter hits: 4 classes, 5 features x, y, z, E, t, with
  x, y, z already scaled into [-1, 1] by the detector's extent and voxelized in that fixed frame, not per event).

  Blocks (out channels, repeats, voxel resolution or None for a shared MLP):
  shapenet_part ((64,1,32),(128,2,16),(512,1,None),(2048,1,None)); s3dis ((64,1,32),(64,2,16),(128,1,16),
  (1024,1,None)); calo ((64,1,16),(64,2,8),(128,1,8),(1024,1,None)). Parameters at width 1.0: 4,200,434
  (shapenet_part) and 2,572,493 (s3dis), equal to the reference. An HGCAL-like event holds about 1,600 hits; at
  S3DIS's resolutions its training step took 4.8x longer (1.45 s against 0.30 s for 4 events at width 0.25).

  ``__call__(points, shape_one_hot=None, *, point_mask=None)``: ``points`` float [B, N, in_features] whose first
  3 columns are xyz; for shapenet_part, ``shape_one_hot`` float [B, 16]; ``point_mask`` bool [B, N], False on
  padded points (they enter no voxel, no batch statistic and no pooled feature; their logits mean nothing).
  Returns logits [B, N, num_classes], or with ``embed_dim > 0`` ``(logits, embeddings [B, N, embed_dim])``: a
  Linear beside the classifier, per-point embeddings for clustering (the instance head).

  Example:
    >>> model = PVCNN("calo", width=0.125, rngs=nnx.Rngs(0))
    >>> hits = jnp.zeros((2, 64, 5))
    >>> model(hits, point_mask=jnp.arange(64)[None] < jnp.array([[40], [64]])).shape
    (2, 64, 4)
  """

  def __init__(self, task: str = "shapenet_part", width: float = 1.0, *, num_classes: int | None = None,
               in_features: int | None = None, num_shapes: int = 16, embed_dim: int = 0, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if task not in BLOCKS:
      raise ValueError(f"task must be one of {sorted(BLOCKS)}, got {task!r}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.task, self.num_shapes = task, num_shapes
    shapenet, calo = task == "shapenet_part", task == "calo"
    num_classes = num_classes or {"shapenet_part": 50, "s3dis": 13, "calo": 4}[task]
    cin = in_features or {"shapenet_part": 6, "s3dis": 9, "calo": 5}[task]
    layers, concat = [], 0
    for out, repeats, resolution in BLOCKS[task]:
      out = int(width * out) if (shapenet or resolution is not None) else int(min(1.0, width) * out)
      for _ in range(repeats):
        if resolution is None:
          layers.append(SharedMLP(cin, out, **kw))
        else:
          layers.append(PVConv(cin, out, resolution, with_se=shapenet, normalize=not (shapenet or calo),
                               centre=not calo, **kw))
        cin = out
        concat += out
    self.blocks = nnx.List(layers)
    w = lambda c: int(width * c)
    if shapenet:
      self.cloud = None
      head_in, head = num_shapes + cin + concat, PART_HEAD
    else:
      self.cloud = nnx.List([nnx.Linear(cin, w(256), **kw), nnx.BatchNorm(w(256), momentum=0.9, **kw),
                             nnx.Linear(w(256), w(128), **kw), nnx.BatchNorm(w(128), momentum=0.9, **kw)])
      head_in, head = concat + w(128), (512, 0.3, 256, 0.3)
    self.head, self.classifier = segmentation_head(head_in, head, width, num_classes, **kw)
    self.embedding = nnx.Linear(self.classifier.in_features, embed_dim, **kw) if embed_dim else None

  def __call__(self, points, shape_one_hot=None, *, point_mask=None):
    b, n, _ = points.shape
    if self.cloud is None:
      check_shape_one_hot(shape_one_hot, self.num_shapes)
    if point_mask is not None and (point_mask.shape != (b, n) or point_mask.dtype != jnp.bool_):
      raise ValueError(f"point_mask must be bool [B, N] = [{b}, {n}] (False on padded points), got "
                       f"{point_mask.dtype}{list(point_mask.shape)}.")
    xyz = points[..., :3]
    feats, outs = points, []
    for block in self.blocks:
      feats = block(feats, xyz, point_mask) if isinstance(block, PVConv) else block(feats, point_mask)
      outs.append(feats)
    if self.cloud is None:
      h = part_features(outs, shape_one_hot, self.num_shapes, mask=point_mask)
    else:
      g = masked_max(feats, point_mask)
      for i in range(0, 4, 2):
        g = jax.nn.relu(self.cloud[i + 1](self.cloud[i](g)))
      h = jnp.concatenate(outs + [jnp.broadcast_to(g[:, None, :], (b, n, g.shape[-1]))], axis=-1)
    for layer in self.head:
      h = layer(h, point_mask) if isinstance(layer, SharedMLP) else layer(h)
    return self.classifier(h) if self.embedding is None else (self.classifier(h), self.embedding(h))
