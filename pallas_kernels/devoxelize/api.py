"""Trilinear devoxelization on GPU with Pallas: ``out[p]`` interpolates a sparse tensor's features at point ``p``
from its 8 lattice corners found in a :class:`pallas_kernels.hash.api.HashTable`, with exact, deterministic
feature gradients (points are not differentiated, as in the XLA path, where voxelization stops their gradient).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _config
from pallas_kernels.devoxelize import kernel
from pallas_kernels.hash import api as hash_api
from pallas_kernels.hash import kernel as hash_kernel
from pallas_kernels.hash.api import HashTable


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Points per forward program and voxels per backward program (powers of two >= 16); Triton launch params."""
  points: int = 32
  voxels: int = 64
  num_warps: int = 4
  num_stages: int = 1

  @classmethod
  def for_channels(cls, channels: int) -> "BlockSizes":
    """Defaults by channel count: the forward keeps a points x channels float32 accumulator in registers, so
    wider features take fewer points and more warps (compiled without spills for 16 to 256 channels; ptxas
    spilled 8 bytes on sm_90 at 16 points x 4 warps for 128 channels)."""
    c = _config.next_pow2(channels, 16)
    return cls(points=32, num_warps=4) if c <= 32 else cls(points=16, num_warps=8)

  def __post_init__(self):
    _config.check_block_sizes(self, ("points", "voxels"))


def devoxelize(table: HashTable, feats, xyz, batch, *, stride=(1, 1, 1), block_sizes: BlockSizes | None = None,
               interpret: bool | None = None):
  """``(out [P, C], flags int32[])``: trilinear interpolation of ``feats`` (the rows of ``table``) at ``xyz``.

  Args:
    table: the hash table of the voxels' coordinates (rows = rows of ``feats``).
    feats: [N, C] float32, bfloat16 or float16. xyz: float [P, 3] in finest-voxel units. batch: int32 [P], -1
      for padded points (which get zeros).
    stride: the voxels' tensor stride (their lattice spacing in finest units).
  """
  if not isinstance(table, HashTable):
    raise TypeError(f"devoxelize: table must be a HashTable, got {type(table).__name__}.")
  if feats.ndim != 2 or feats.shape[0] != table.key_hi.shape[0]:
    raise ValueError(f"devoxelize: feats must be [N={table.key_hi.shape[0]}, C] (one row per table row), got "
                     f"{feats.shape}.")
  if xyz.ndim != 2 or xyz.shape[1] != 3 or batch.shape != (xyz.shape[0],):
    raise ValueError(f"devoxelize: xyz must be [P, 3] and batch [P], got {xyz.shape} and {batch.shape}.")
  if batch.dtype != jnp.int32:
    raise TypeError(f"devoxelize: batch must be int32, got {batch.dtype}.")
  stride = tuple(int(s) for s in stride)
  bs = block_sizes or BlockSizes.for_channels(feats.shape[1])
  out, rows, weights, status = _devoxelize(table.slots, table.key_hi, table.key_lo, feats, xyz, batch,
                                           stride=stride, bs=bs, interpret=interpret)
  del rows, weights
  return out, hash_api.flag(status == hash_kernel.UNFINISHED, hash_api.TABLE_FULL)


def _forward(slots, key_hi, key_lo, feats, xyz, batch, *, stride, bs, interpret):
  p = len(xyz)
  c_p = _config.next_pow2(feats.shape[1], 16)
  lattice = jax.lax.stop_gradient(xyz).astype(jnp.float32) / jnp.asarray(stride, jnp.float32)[None, :]
  p_p = _config.round_up(p, bs.points)
  p_t = _config.pad(lattice, 0, p_p).T
  b = _config.pad(batch, 0, p_p, -1)
  fp = _config.pad(feats, 1, c_p)
  out, rows, weights, status = kernel.forward(p_t, b, slots, key_hi, key_lo, fp, stride=stride, bm=bs.points,
                                              num_warps=bs.num_warps, num_stages=bs.num_stages,
                                              interpret=interpret)
  weights = weights[:, :p]
  weights = weights / jnp.maximum(jnp.sum(weights, axis=0, keepdims=True), 1e-12)  # renormalised, as applied
  return out[:p, :feats.shape[1]], rows[:, :p], weights, status[:p]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _devoxelize(slots, key_hi, key_lo, feats, xyz, batch, stride, bs, interpret):
  return _forward(slots, key_hi, key_lo, feats, xyz, batch, stride=stride, bs=bs, interpret=interpret)


def _devoxelize_fwd(slots, key_hi, key_lo, feats, xyz, batch, stride, bs, interpret):
  outs = _forward(slots, key_hi, key_lo, feats, xyz, batch, stride=stride, bs=bs, interpret=interpret)
  like = jnp.zeros((feats.shape[0], 0), feats.dtype)  # carries the row count and dtype
  return outs, (outs[1], outs[2], like, feats.shape[1], xyz)


def _devoxelize_bwd(stride, bs, interpret, res, cts):
  rows, weights, like, c, xyz = res
  g, dtype = cts[0], like.dtype
  n = like.shape[0]
  p = rows.shape[1]
  flat_rows, flat_w = rows.reshape(-1), weights.reshape(-1)  # entry e = corner * P + point
  key = jnp.where(flat_rows >= 0, flat_rows, n)
  order = jnp.argsort(key, stable=True)  # by voxel, then by entry: a fixed order
  count = jax.ops.segment_sum(jnp.ones_like(key), key, num_segments=n + 1)[:n]
  start = jnp.cumsum(count) - count
  v_p = _config.round_up(n, bs.voxels)
  c_p = _config.next_pow2(c, 16)
  g_p = _config.pad(g.astype(dtype), 1, c_p)
  start, count = (_config.pad(a.astype(jnp.int32), 0, v_p) for a in (start, count))
  d_feats = kernel.backward(start, count, (order % p).astype(jnp.int32), flat_w[order], g_p, v_p, bm=bs.voxels,
                            num_warps=bs.num_warps, num_stages=bs.num_stages, interpret=interpret)
  zeros = lambda a: jnp.zeros_like(a) if jnp.issubdtype(a.dtype, jnp.floating) else None
  return (None, None, None, d_feats[:n, :c], zeros(xyz), None)


_devoxelize.defvjp(_devoxelize_fwd, _devoxelize_bwd)
