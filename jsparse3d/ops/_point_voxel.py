"""Point <-> voxel operations: sparse (SPVConv) and dense (PVConv), all differentiable in the features.

Points are padded arrays like tensors: ``xyz float[P, 3]`` in finest-voxel units, ``batch int32[P]`` (-1 on padded
rows), ``feats [P, C]`` (zero on padded rows).

Sparse (docs/conventions.md, "Points and voxels"):
- :func:`voxelize`: a point's voxel is ``floor(xyz)``; the features of the points in a voxel are averaged.
- :func:`point_to_voxel`: the same average, into the rows of an existing tensor at its stride (points whose voxel
  the tensor does not hold contribute to no row).
- :func:`voxel_to_point`: trilinear: a voxel's value sits at its lattice point (coordinates / stride); the 8 corners
  around ``xyz / stride`` are ``floor + {0, 1}^3``; missing corners get weight 0 and the rest are renormalised.

Dense (PVCNN): :func:`avg_voxelize_dense` and :func:`trilinear_devoxelize_dense` on ``[B, N, ...]`` point sets
and ``[B, r, r, r, C]`` grids.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jsparse3d import _errors
from jsparse3d import _macs
from jsparse3d._sparse_tensor import SparseTensor
from jsparse3d.ops import _backend
from jsparse3d.ops import _conv
from jsparse3d.ops import _hash
from jsparse3d.ops import _kernel_map

_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)), np.int32)  # [8, 3]


def _check_points(xyz, batch, feats=None):
  if getattr(xyz, "ndim", None) != 2 or xyz.shape[1] != 3:
    raise ValueError(f"xyz must be float [P, 3] (x, y, z in voxel units), got {getattr(xyz, 'shape', xyz)}.")
  if getattr(batch, "shape", None) != xyz.shape[:1]:
    raise ValueError(f"batch must be int [P] with P = {xyz.shape[0]}, got {getattr(batch, 'shape', batch)}.")
  if feats is not None and (feats.ndim != 2 or feats.shape[0] != xyz.shape[0]):
    raise ValueError(f"feats must be [P, C] with P = {xyz.shape[0]}, got {feats.shape}.")


def _scatter_mean(feats, rows, num_rows):
  """Mean of ``feats`` per row id in ``[0, num_rows)``; ids outside are ignored."""
  ids = jnp.where((rows >= 0) & (rows < num_rows), rows, num_rows)
  total = jax.ops.segment_sum(feats.astype(jnp.float32), ids, num_segments=num_rows + 1)[:num_rows]
  count = jax.ops.segment_sum(jnp.ones(ids.shape, jnp.float32), ids, num_segments=num_rows + 1)[:num_rows]
  return (total / jnp.maximum(count, 1.0)[:, None]).astype(feats.dtype)


def voxelize(xyz, batch, feats, *, capacity: int | None = None):
  """Points -> a SparseTensor of the voxels they occupy (``floor(xyz)``), features averaged per voxel.

  Args:
    xyz: float [P, 3] in voxel units. batch: int32 [P], -1 for padded points. feats: [P, C].
    capacity: rows of the result (default P; a voxel set never exceeds its point count).
  Returns:
    ``(x, point_row)``: the tensor (voxel rows in order of first occurrence) and ``int32[P]`` each point's row
    (-1 for padded points).
  """
  _check_points(xyz, batch, feats)
  p = xyz.shape[0]
  capacity = p if capacity is None else capacity
  if capacity < p:
    raise ValueError(f"capacity {capacity} is smaller than the {p} point rows; P points can occupy P voxels.")
  valid = batch >= 0
  cells = jnp.floor(jax.lax.stop_gradient(xyz)).astype(jnp.int32)
  coords = jnp.where(valid[:, None], jnp.concatenate([batch[:, None].astype(jnp.int32), cells], axis=1), -1)
  # Valid points first (a stable partition), so that they form the prefix downsample_coords expects.
  num_valid = jnp.sum(valid, dtype=jnp.int32)
  rank = jax.lax.associative_scan(jnp.add, valid.astype(jnp.int32)) - 1
  dest = jnp.where(valid, rank, num_valid + jnp.arange(p, dtype=jnp.int32) - rank - 1)
  partitioned = jnp.zeros_like(coords).at[dest].set(coords, unique_indices=True)
  if _native_lookups(None, feats.dtype):
    out_coords, out_nv, out_row, errors = _kernel_map.downsample_coords_native(partitioned, num_valid, (1, 1, 1))
    errors, cache = errors & ~_errors.DUPLICATE_COORDS, {}  # many points share a voxel: not an error here
  else:
    out_coords, out_nv, out_index, out_row = _kernel_map.downsample_coords(partitioned, num_valid, (1, 1, 1))
    errors, cache = out_index.errors, {} if capacity != p else {"index": out_index}
  point_row = out_row[dest]
  pad = jnp.array([-1, 0, 0, 0], jnp.int32)
  out_coords = jnp.concatenate([out_coords, jnp.broadcast_to(pad, (capacity - p, 4))], axis=0)
  mean = _scatter_mean(feats, point_row, capacity)
  return SparseTensor(out_coords, mean, out_nv, errors, cache, (1, 1, 1)), point_row


def _native_lookups(implementation: str | None, dtype) -> bool:
  """Whether the point-voxel lookups run in the native CPU kernels (the default on CPU, for float32 features), not
  through an XLA hash index: the same rows, in a program a fraction of the size (SPVCNN's training step compiled in
  6-9 s with XLA's hash probes)."""
  return _backend.resolve("voxel_to_point", implementation, dtype) == "native"


def _lookup(x: SparseTensor, coords, native: bool):
  """``(rows int32[...], x)``: the row of ``x`` holding each of ``coords`` (``int32[..., 4]``), -1 where none, by
  the native kernels or through ``x``'s XLA hash index; ``x`` comes back with the errors (and any index) of the
  lookup."""
  if native:
    rows, errors = _kernel_map.query_rows_native(x.coords, x.num_valid, coords.reshape(-1, 4))
    return rows.reshape(coords.shape[:-1]), x.replace(errors=x.errors | errors)
  index, x = _conv.ensure_index(x)
  return _hash.query_index(index, coords), x


def _point_voxel_coords(xyz, batch, stride):
  s = jnp.asarray(stride, jnp.float32)[None, :]
  cells = jnp.floor(jax.lax.stop_gradient(xyz) / s).astype(jnp.int32) * jnp.asarray(stride, jnp.int32)[None, :]
  return jnp.concatenate([batch[:, None].astype(jnp.int32), cells], axis=1)


def point_to_voxel(x: SparseTensor, xyz, batch, feats) -> SparseTensor:
  """Averages point features into the rows of ``x`` (at ``x``'s stride); rows with no point get zeros.

  Returns ``x`` with the averaged features (and ``x``'s geometry and cache).
  """
  _check_points(xyz, batch, feats)
  rows, x = _lookup(x, _point_voxel_coords(xyz, batch, x.stride), _native_lookups(None, x.feats.dtype))
  rows = jnp.where(batch >= 0, rows, -1)
  return x.replace(feats=_scatter_mean(feats, rows, x.capacity))


def voxel_to_point(x: SparseTensor, xyz, batch, *, implementation: str | None = None, with_errors: bool = False):
  """``[P, C]``: trilinear interpolation of ``x``'s features at the points (zero for padded points and points
  with no voxel among their 8 corners). Differentiable in the features; the points are not differentiated.

  ``implementation``: ``"xla"`` (corners looked up through an XLA hash index), ``"native"`` (looked up by the
  CPU kernels), ``"pallas"`` (the GPU kernels of :mod:`pallas_kernels.devoxelize`; interpret mode on CPU) or None:
  Pallas on a GPU backend, native on CPU where the kernels build, else XLA. ``with_errors``: return ``(values,
  errors)``, the error flags of ``x`` and of the lookup (the Pallas probe's ``TABLE_FULL``), for use under ``jit``.
  """
  _check_points(xyz, batch)
  implementation = _backend.resolve("voxel_to_point", implementation, x.feats.dtype)
  if implementation == "pallas":
    index, x = _conv.ensure_index(x, "pallas")
    out, flags = _backend.pallas("devoxelize").devoxelize(index.table, x.feats, xyz, batch.astype(jnp.int32),
                                                          stride=x.stride)
    errors = x.errors | _hash.pallas_errors(flags)
    _errors.check_now(errors, "voxel_to_point")
    return (out, errors) if with_errors else out
  s = jnp.asarray(x.stride, jnp.float32)[None, :]
  p = jax.lax.stop_gradient(xyz) / s
  base = jnp.floor(p)
  frac = p - base
  corners = base.astype(jnp.int32)[:, None, :] + _CORNERS[None]  # [P, 8, 3] in stride units
  coords = jnp.concatenate([jnp.broadcast_to(batch[:, None, None].astype(jnp.int32), corners.shape[:2] + (1,)),
                            corners * jnp.asarray(x.stride, jnp.int32)[None, None, :]], axis=2)
  rows, x = _lookup(x, coords, implementation == "native")  # [P, 8]
  present = (rows >= 0) & (batch >= 0)[:, None]
  w = jnp.prod(jnp.where(_CORNERS[None] == 1, frac[:, None, :], 1.0 - frac[:, None, :]), axis=2)
  w = jnp.where(present, w, 0.0)
  w = w / jnp.maximum(w.sum(axis=1, keepdims=True), 1e-12)
  vals = x.feats.at[jnp.where(present, rows, _kernel_map.SENTINEL)].get(mode="fill", fill_value=0)
  with _macs.counted_by_op():  # an interpolation, which count_macs leaves out, not a layer's matmul
    out = jnp.einsum("pk,pkc->pc", w.astype(vals.dtype), vals)
  return (out, x.errors) if with_errors else out


# -- dense (PVCNN) ------------------------------------------------------------------------------------------


def avg_voxelize_dense(feats, vox, resolution: int, *, mask=None):
  """Average point features into dense grids.

  Args:
    feats: [B, N, C]. vox: int32 [B, N, 3] voxel indices in ``[0, resolution)``. resolution: static grid edge.
    mask: optional bool [B, N], False on padded points (they enter no voxel).
  Returns:
    [B, r, r, r, C]: the mean of the points in each voxel (zero where there is none).
  """
  b, n, c = feats.shape
  r = int(resolution)
  flat = (vox[..., 0] * r + vox[..., 1]) * r + vox[..., 2] + (jnp.arange(b, dtype=jnp.int32) * r ** 3)[:, None]
  if mask is not None:
    flat = jnp.where(mask, flat, -1)
  grid = _scatter_mean(feats.reshape(b * n, c), flat.reshape(-1), b * r ** 3)
  return grid.reshape(b, r, r, r, c)


def trilinear_devoxelize_dense(grid, coords):
  """Trilinear interpolation of dense grids at float voxel coordinates.

  Args:
    grid: [B, r, r, r, C]. coords: float [B, N, 3] in ``[0, r - 1]`` (voxel centres at integers).
  Returns:
    [B, N, C].
  """
  b, r = grid.shape[0], grid.shape[1]
  c = jax.lax.stop_gradient(coords)
  lo = jnp.clip(jnp.floor(c), 0, r - 1).astype(jnp.int32)
  frac = c - lo.astype(c.dtype)
  hi = jnp.minimum(lo + 1, r - 1)
  out = 0.0
  bidx = jnp.arange(b)[:, None]
  for corner in _CORNERS:
    idx = jnp.where(corner[None, None] == 1, hi, lo)
    w = jnp.prod(jnp.where(corner[None, None] == 1, frac, 1.0 - frac), axis=-1)
    out = out + w[..., None].astype(grid.dtype) * grid[bidx, idx[..., 0], idx[..., 1], idx[..., 2]]
  return out


def normalize_dense_coords(xyz, resolution: int, *, normalize: bool = True, eps: float = 0.0, centre: bool = True,
                           mask=None):
  """PVCNN's voxelization coordinates: centre each point set, scale into the unit cube, times ``resolution``.

  Args:
    xyz: float [B, N, 3]. normalize: scale by twice the largest distance from the centre (else assume coordinates
      in [-1, 1]). eps: added to that scale. centre: subtract each set's mean first (False: a fixed frame, as for
      a detector whose coordinates were scaled into [-1, 1]). mask: optional bool [B, N], False on padded points
      (left out of the mean and the scale).
  Returns:
    ``(float [B, N, 3] in [0, r - 1], int32 [B, N, 3] rounded voxel indices)``.
  """
  c = jax.lax.stop_gradient(xyz)
  valid = jnp.ones(c.shape[:2], bool) if mask is None else mask
  if centre:
    if mask is None:
      c = c - c.mean(axis=1, keepdims=True)
    else:
      count = jnp.maximum(valid.sum(axis=1), 1)[:, None, None].astype(c.dtype)
      c = c - jnp.where(valid[..., None], c, 0).sum(axis=1, keepdims=True) / count
  if normalize:
    radius = jnp.where(valid, jnp.linalg.norm(c, axis=2), 0).max(axis=1)[:, None, None]
    c = c / (radius * 2.0 + eps) + 0.5
  else:
    c = (c + 1.0) / 2.0
  c = jnp.clip(c * resolution, 0, resolution - 1)
  return c, jnp.round(c).astype(jnp.int32)

