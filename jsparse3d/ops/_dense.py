"""Conversion between SparseTensor and dense voxel grids (for debugging, oracles and dense baselines)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jsparse3d import _coords
from jsparse3d import _errors
from jsparse3d._sparse_tensor import SparseTensor


def _check_box(x: SparseTensor, spatial_shape, batch_size, origin):
  shape = _coords.as_triple(spatial_shape, "spatial_shape")
  origin = _coords.as_triple(origin, "origin")
  if any(s < 1 for s in shape) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"spatial_shape and batch_size must be positive, got {shape} and {batch_size!r}.")
  return shape, origin


def _raise_outside(outside):
  if np.any(outside):
    raise ValueError(
        "to_dense: some valid voxels lie outside the dense box, and no voxel is dropped silently. Enlarge "
        "spatial_shape or batch_size, or move origin.")


def to_dense(x: SparseTensor, spatial_shape, *, batch_size: int, origin=(0, 0, 0)) -> jax.Array:
  """Scatters features into a dense grid ``[batch_size, X, Y, Z, C]``.

  Voxel ``(b, c)`` lands at ``[b, *((c - origin) // stride)]``. A valid voxel outside the box is an error: raised
  at once when the values are concrete, and at run time (through a host callback) inside ``jit``.

  Args:
    x: the tensor. spatial_shape: ``(X, Y, Z)`` in units of ``x.stride``. batch_size: static.
    origin: finest-grid coordinate of dense index 0.
  """
  shape, origin = _check_box(x, spatial_shape, batch_size, origin)
  idx = (x.coords[:, 1:] - jnp.asarray([origin], jnp.int32)) // jnp.asarray([x.stride], jnp.int32)
  b = x.coords[:, 0]
  inside = (b >= 0) & (b < batch_size) & jnp.all((idx >= 0) & (idx < jnp.asarray([shape])), axis=1)
  outside = x.valid_mask & ~inside
  if isinstance(outside, jax.core.Tracer):
    jax.debug.callback(_raise_outside, outside)
  else:
    _raise_outside(outside)
  keep = x.valid_mask & inside
  big = jnp.int32(max(batch_size, *shape))  # any index past the box: dropped below, never silently
  b = jnp.where(keep, b, big)
  dense = jnp.zeros((batch_size, *shape, x.num_channels), x.feats.dtype)
  return dense.at[b, idx[:, 0], idx[:, 1], idx[:, 2]].set(x.feats, mode="drop", unique_indices=True)


def from_dense(dense: jax.Array, *, capacity: int | None = None, stride=1, origin=(0, 0, 0)) -> SparseTensor:
  """The non-zero voxels of a dense grid ``[B, X, Y, Z, C]`` as a SparseTensor.

  A voxel is kept if any channel is non-zero; rows are in ``(b, x, y, z)`` order. With ``capacity`` smaller than
  the number of non-zero voxels, the ``CAPACITY_OVERFLOW`` flag is set (raised at once outside ``jit``).

  Args:
    dense: ``[B, X, Y, Z, C]`` float. capacity: static row count, default ``B * X * Y * Z``.
    stride: the grid's stride; coordinates are ``origin + index * stride``. origin: finest-grid coordinate of index 0.
  """
  if getattr(dense, "ndim", None) != 5:
    raise ValueError(f"dense must have shape [B, X, Y, Z, C], got {getattr(dense, 'shape', type(dense))}.")
  stride = _coords.as_triple(stride, "stride")
  origin = _coords.as_triple(origin, "origin")
  b, *shape, c = dense.shape
  total = b * int(np.prod(shape))
  capacity = total if capacity is None else capacity
  if not isinstance(capacity, int) or capacity < 0:
    raise TypeError(f"capacity must be a non-negative int, got {capacity!r}.")
  flat = dense.reshape(total, c)
  nonzero = jnp.any(flat != 0, axis=1)
  count = jnp.sum(nonzero, dtype=jnp.int32)
  (rows,) = jnp.nonzero(nonzero, size=capacity, fill_value=total)
  valid = _coords.valid_rows(capacity, count)
  grid = jnp.stack(jnp.unravel_index(jnp.minimum(rows, total - 1), (b, *shape)), axis=1).astype(jnp.int32)
  xyz = grid[:, 1:] * jnp.asarray([stride], jnp.int32) + jnp.asarray([origin], jnp.int32)
  coords = jnp.where(valid[:, None], jnp.concatenate([grid[:, :1], xyz], axis=1), jnp.array([[-1, 0, 0, 0]]))
  feats = jnp.where(valid[:, None], flat.at[rows].get(mode="fill", fill_value=0), jnp.zeros((), flat.dtype))
  errors = (_errors.flag(count > capacity, _errors.CAPACITY_OVERFLOW)
            | _errors.flag(~jnp.all(_coords.in_range(jnp.where(valid[:, None], coords, 0))), _errors.OUT_OF_RANGE))
  _errors.check_now(errors, "from_dense")
  return SparseTensor(coords.astype(jnp.int32), feats, jnp.minimum(count, capacity), errors, {}, stride)
