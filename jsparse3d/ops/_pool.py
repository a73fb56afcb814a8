"""Pooling: sparse max/avg pooling over kernel windows, and global pooling per batch item."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jsparse3d._sparse_tensor import SparseTensor
from jsparse3d.ops import _conv
from jsparse3d.ops import _kernel_map


def _windows(x: SparseTensor, kernel_size, stride, fill, capacity):
  """``([N_out, K, C] window values, [N_out, K] present mask, output geometry)``."""
  if not isinstance(x, SparseTensor):
    raise TypeError(f"pooling expects a SparseTensor, got {type(x).__name__}.")
  kmap, y = _conv.kernel_map(x, kernel_size, stride=stride, capacity=capacity)
  table = kmap.neighbor_table()
  present = table >= 0
  rows = jnp.where(present, table, _kernel_map.SENTINEL)
  vals = x.feats.at[rows].get(mode="fill", fill_value=fill)
  return vals, present, y


def max_pool(x: SparseTensor, kernel_size=2, stride=2, *, capacity: int | None = None) -> SparseTensor:
  """Sparse max pooling: each output takes the channel-wise max over the input sites in its window.

  Output coordinates follow the strided-conv rule (see :func:`jsparse3d.ops.conv3d`); the output remembers
  ``x`` as its parent, so :func:`jsparse3d.ops.conv_transpose3d` can return to ``x``'s coordinates.

  Args:
    x: ``[N, C]`` features. kernel_size, stride: ints or 3-tuples (default 2 and 2).
    capacity: output rows, as in :func:`jsparse3d.ops.conv3d` (default the planned or the input capacity).
  Returns:
    SparseTensor with stride ``x.stride * stride``.
  """
  vals, present, y = _windows(x, kernel_size, stride, -jnp.inf, capacity)
  out = jnp.max(vals, axis=1)
  return y.replace(feats=jnp.where(y.valid_mask[:, None], out, jnp.zeros((), out.dtype)))


def avg_pool(x: SparseTensor, kernel_size=2, stride=2, *, capacity: int | None = None) -> SparseTensor:
  """Sparse average pooling: the mean over the input sites present in each output's window (arguments as in
  :func:`max_pool`)."""
  vals, present, y = _windows(x, kernel_size, stride, 0, capacity)
  count = jnp.maximum(present.sum(axis=1, keepdims=True, dtype=jnp.float32), 1.0)
  out = (jnp.sum(vals.astype(jnp.float32), axis=1) / count).astype(x.feats.dtype)
  return y.replace(feats=jnp.where(y.valid_mask[:, None], out, jnp.zeros((), out.dtype)))


def _batch_ids(x: SparseTensor, batch_size: int):
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int (static), got {batch_size!r}.")
  b = x.coords[:, 0]
  return jnp.where(x.valid_mask & (b < batch_size), b, batch_size)


def global_avg_pool(x: SparseTensor, batch_size: int) -> jax.Array:
  """``[batch_size, C]``: the mean feature of each batch item over its valid rows (0 for an empty item)."""
  ids = _batch_ids(x, batch_size)
  total = jax.ops.segment_sum(x.feats.astype(jnp.float32), ids, num_segments=batch_size + 1)[:batch_size]
  count = jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids, num_segments=batch_size + 1)[:batch_size]
  return (total / jnp.maximum(count, 1)[:, None]).astype(x.feats.dtype)


def global_max_pool(x: SparseTensor, batch_size: int) -> jax.Array:
  """``[batch_size, C]``: the channel-wise max of each batch item over its valid rows (0 for an empty item)."""
  ids = _batch_ids(x, batch_size)
  out = jax.ops.segment_max(x.feats, ids, num_segments=batch_size + 1)[:batch_size]
  return jnp.where(jnp.isneginf(out), jnp.zeros((), out.dtype), out)
