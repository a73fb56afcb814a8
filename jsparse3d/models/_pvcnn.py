"""PVCNN: point-voxel convolution networks for part segmentation (ShapeNet) and indoor scenes (S3DIS).

Dense, with fixed-size point sets ``[B, N, C]``: each PVConv averages the points into an ``r^3`` grid, runs two
conv 3^3 + BN + LeakyReLU there (optionally squeeze-excite), reads the grid back at every point by trilinear
interpolation and adds a shared MLP of the point features. The layer choices (PyTorch defaults included: convs
with bias, BN over every grid cell) follow the reference implementation, so parameter counts match it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsparse3d import ops

BLOCKS = {
    "shapenet_part": ((64, 1, 32), (128, 2, 16), (512, 1, None), (2048, 1, None)),
    "s3dis": ((64, 1, 32), (64, 2, 16), (128, 1, 16), (1024, 1, None)),
}


class SharedMLP(nnx.Module):
  """Per-point Linear (with bias) + BN + ReLU on ``[B, N, C]``."""

  def __init__(self, in_features, out_features, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn = nnx.BatchNorm(out_features, momentum=0.9, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.linear(x)))


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


def part_features(outs, shape_one_hot, num_shapes: int):
  """``[B, N, C]``: the object's one-hot category, every layer's output in ``outs`` and the max over the points
  of the last one, side by side at every point (the input of a part-segmentation head)."""
  last = outs[-1]
  b, n, _ = last.shape
  pooled = last.max(axis=1)
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

  def __init__(self, in_features, out_features, resolution, *, with_se=False, normalize=True, eps=0.0, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resolution, self.normalize, self.eps = resolution, normalize, eps
    self.conv1 = nnx.Conv(in_features, out_features, (3, 3, 3), padding="SAME", **kw)
    self.bn1 = nnx.BatchNorm(out_features, momentum=0.9, epsilon=1e-4, **kw)
    self.conv2 = nnx.Conv(out_features, out_features, (3, 3, 3), padding="SAME", **kw)
    self.bn2 = nnx.BatchNorm(out_features, momentum=0.9, epsilon=1e-4, **kw)
    self.se = SqueezeExcite(out_features, **kw) if with_se else None
    self.point = SharedMLP(in_features, out_features, **kw)

  def __call__(self, feats, xyz):
    r = self.resolution
    coords, vox = ops.normalize_dense_coords(xyz, r, normalize=self.normalize, eps=self.eps)
    grid = ops.avg_voxelize_dense(feats, vox, r)
    grid = jax.nn.leaky_relu(self.bn1(self.conv1(grid)), 0.1)
    grid = jax.nn.leaky_relu(self.bn2(self.conv2(grid)), 0.1)
    if self.se is not None:
      grid = self.se(grid)
    return ops.trilinear_devoxelize_dense(grid, coords) + self.point(feats)


class PVCNN(nnx.Module):
  """PVCNN for ``task="shapenet_part"`` (50 part classes, 16 shape classes, xyz + normals; squeeze-excite, no
  coordinate normalisation) or ``"s3dis"`` (13 classes, 9 input features; a global cloud feature).

  Blocks (out channels, repeats, voxel resolution or None for a shared MLP):
  shapenet_part ((64,1,32),(128,2,16),(512,1,None),(2048,1,None)); s3dis ((64,1,32),(64,2,16),(128,1,16),
  (1024,1,None)). Parameters at width 1.0: 4,200,434 (shapenet_part) and 2,572,493 (s3dis), equal to the reference.

  ``__call__(points, shape_one_hot=None)``: ``points`` float [B, N, in_features] whose first 3 columns are xyz;
  for shapenet_part, ``shape_one_hot`` float [B, 16]. Returns logits [B, N, num_classes].
  """

  def __init__(self, task: str = "shapenet_part", width: float = 1.0, *, num_classes: int | None = None,
               in_features: int | None = None, num_shapes: int = 16, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if task not in BLOCKS:
      raise ValueError(f"task must be one of {sorted(BLOCKS)}, got {task!r}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.task, self.num_shapes = task, num_shapes
    shapenet = task == "shapenet_part"
    num_classes = num_classes or (50 if shapenet else 13)
    cin = in_features or (6 if shapenet else 9)
    layers, concat = [], 0
    for out, repeats, resolution in BLOCKS[task]:
      out = int(width * out) if (shapenet or resolution is not None) else int(min(1.0, width) * out)
      for _ in range(repeats):
        if resolution is None:
          layers.append(SharedMLP(cin, out, **kw))
        else:
          layers.append(PVConv(cin, out, resolution, with_se=shapenet, normalize=not shapenet, **kw))
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

  def __call__(self, points, shape_one_hot=None):
    b, n, _ = points.shape
    if self.cloud is None:
      check_shape_one_hot(shape_one_hot, self.num_shapes)
    xyz = points[..., :3]
    feats, outs = points, []
    for block in self.blocks:
      feats = block(feats, xyz) if isinstance(block, PVConv) else block(feats)
      outs.append(feats)
    if self.cloud is None:
      h = part_features(outs, shape_one_hot, self.num_shapes)
    else:
      g = feats.max(axis=1)
      for i in range(0, 4, 2):
        g = jax.nn.relu(self.cloud[i + 1](self.cloud[i](g)))
      h = jnp.concatenate(outs + [jnp.broadcast_to(g[:, None, :], (b, n, g.shape[-1]))], axis=-1)
    for layer in self.head:
      h = layer(h)
    return self.classifier(h)
