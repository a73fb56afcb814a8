"""Independent oracles for tests: numpy sort-and-search for geometry, dense lax convolution for values.

Nothing here uses jsparse3d's hashing or kernel maps.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jsparse3d as js


def np_keys(coords: np.ndarray) -> np.ndarray:
  """int64 keys of (batch, x, y, z) rows, order-preserving; coordinates within +-2^19."""
  c = np.asarray(coords, np.int64)
  span = np.int64(1 << 20)
  u = c[:, 1:] + (1 << 19)
  return ((c[:, 0] * span + u[:, 0]) * span + u[:, 1]) * span + u[:, 2]


def np_lookup(table_coords: np.ndarray, query: np.ndarray) -> np.ndarray:
  """Row of each query in table_coords (unique rows), -1 if absent; by sorting and binary search."""
  keys = np_keys(table_coords)
  order = np.argsort(keys)
  sk = keys[order]
  qk = np_keys(query.reshape(-1, 4))
  pos = np.clip(np.searchsorted(sk, qk), 0, max(len(sk) - 1, 0))
  hit = (sk[pos] == qk) if len(sk) else np.zeros(len(qk), bool)
  return np.where(hit, order[pos] if len(sk) else -1, -1).reshape(query.shape[:-1])


def np_offsets(kernel_size, dilation, in_stride):
  axes = [(np.arange(k) - (k - 1) // 2) * d * s for k, d, s in zip(kernel_size, dilation, in_stride)]
  return np.array(list(itertools.product(*axes)), np.int64).reshape(-1, 3)


def np_downsample(coords: np.ndarray, factor) -> np.ndarray:
  """Sorted unique Minkowski output coordinates."""
  c = np.asarray(coords, np.int64).copy()
  c[:, 1:] = np.floor_divide(c[:, 1:], factor) * np.asarray(factor)
  return np.unique(c, axis=0)


def np_neighbor_table(in_coords, out_coords, kernel_size, dilation, in_stride) -> np.ndarray:
  """[N_out, K] input row of out + offset_k, -1 if absent."""
  offs = np_offsets(kernel_size, dilation, in_stride)
  q = np.asarray(out_coords, np.int64)[:, None, :].repeat(len(offs), 1)
  q[:, :, 1:] += offs[None]
  return np_lookup(in_coords, q)


def valid_part(x: js.SparseTensor):
  n = int(x.num_valid)
  return np.asarray(x.coords)[:n], np.asarray(x.feats, np.float64)[:n]


def random_tensor(rng, n_grid=10, density=0.2, channels=3, batch=1, capacity_extra=3, dtype=np.float32,
                  offset=(0, 0, 0)):
  """A random SparseTensor on a [batch, n_grid^3] box (coords shifted by offset) and its dense box."""
  occ = rng.random((batch, n_grid, n_grid, n_grid)) < density
  bxyz = np.argwhere(occ).astype(np.int32)
  bxyz[:, 1:] += np.asarray(offset, np.int32)
  feats = rng.standard_normal((len(bxyz), channels)).astype(dtype)
  return js.SparseTensor.from_coords(bxyz, feats, capacity=len(bxyz) + capacity_extra)


def densify(coords, feats, shape, batch, stride=(1, 1, 1)):
  """jnp [batch, *shape, C] grid holding feats at coords // stride (differentiable in feats)."""
  c = np.asarray(coords)
  idx = c[:, 1:] // np.asarray(stride)
  grid = jnp.zeros((batch, *shape, feats.shape[1]), feats.dtype)
  return grid.at[c[:, 0], idx[:, 0], idx[:, 1], idx[:, 2]].set(feats)


def dense_conv(grid, w, stride, dilation):
  """lax.conv_general_dilated with the padding of docs/conventions.md."""
  ks = w.shape[:3]
  pad = []
  for k, d in zip(ks, dilation):
    lo = (k - 1) // 2 * d
    pad.append((lo, (k - 1) * d - lo))
  return lax.conv_general_dilated(grid, w, tuple(stride), pad, rhs_dilation=tuple(dilation),
                                  dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=lax.Precision.HIGHEST)


def dense_sparse_conv(in_coords, feats, w, out_coords, *, stride, dilation, shape, batch):
  """The sparse conv's value at out_coords, computed densely (input stride 1): differentiable in feats and w."""
  out = dense_conv(densify(in_coords, feats, shape, batch), w, stride, dilation)
  q = np.asarray(out_coords)
  idx = q[:, 1:] // np.asarray(stride)
  return out[q[:, 0], idx[:, 0], idx[:, 1], idx[:, 2]]


def dense_sparse_conv_transpose(coarse_coords, coarse_feats, w_t, fine_coords, *, stride, shape, batch,
                                dilation=(1, 1, 1)):
  """Transposed sparse conv computed as the adjoint (vjp) of the dense strided conv, read at fine_coords.

  w_t: [kx, ky, kz, C_coarse, C_fine], the transposed conv's weight.
  """
  w = jnp.swapaxes(w_t, 3, 4)
  zero = jnp.zeros((batch, *shape, w.shape[3]), coarse_feats.dtype)
  _, vjp = jax.vjp(lambda g: dense_conv(g, w, stride, dilation), zero)
  out_shape = jax.eval_shape(lambda g: dense_conv(g, w, stride, dilation), zero).shape
  ct = jnp.zeros(out_shape, coarse_feats.dtype)
  q = np.asarray(coarse_coords)
  qi = q[:, 1:] // np.asarray(stride)
  ct = ct.at[q[:, 0], qi[:, 0], qi[:, 1], qi[:, 2]].set(coarse_feats)
  (fine_grid,) = vjp(ct)
  f = np.asarray(fine_coords)
  return fine_grid[f[:, 0], f[:, 1], f[:, 2], f[:, 3]]


def np_conv(in_coords, feats, w, out_coords, *, dilation, in_stride=(1, 1, 1)):
  """Brute-force numpy sparse conv in float64: out[q] = sum_k W[k]^T x[q + offset_k]."""
  ks = w.shape[:3]
  table = np_neighbor_table(in_coords, out_coords, ks, dilation, in_stride)
  wk = np.asarray(w, np.float64).reshape(-1, w.shape[3], w.shape[4])
  out = np.zeros((len(out_coords), w.shape[4]))
  f = np.asarray(feats, np.float64)
  for k in range(wk.shape[0]):
    hit = table[:, k] >= 0
    out[hit] += f[table[hit, k]] @ wk[k]
  return out
