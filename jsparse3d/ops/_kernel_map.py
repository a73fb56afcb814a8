"""Kernel maps: which input row meets which output row under which kernel offset.

A map is stored as *pairs compacted by offset*: flat ``src`` / ``dst`` row lists in which every block of
``block_size`` consecutive pairs belongs to one offset (each offset's run is padded to whole blocks with a
sentinel row that gathers zero and scatters nowhere). A convolution then runs one small GEMM per block over real
pairs only, with a dynamic block count, instead of gathering a dense ``[N, K, C]`` neighbourhood that is mostly
empty at these sparsities. All shapes are static (the pair lists are sized for the worst case, ``K`` pairs per
row), so nothing can overflow.

Two savings keep the build linear and small:
- a submanifold map with an odd kernel is symmetric (offset ``K-1-o`` is ``-o``): only half the offsets are
  queried, and the other half are the same pairs with roles swapped (``mirrored``);
- the centre offset of a submanifold map pairs every row with itself (``center``): it is a dense matmul, not
  pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jsparse3d import _coords
from jsparse3d import _errors
from jsparse3d.ops import _backend
from jsparse3d.ops import _hash
from jsparse3d.ops import _native

SENTINEL = 1 << 30  # a row index past any array: gathers read zero, scatters drop it


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KernelMap:
  """Pairs ``(src row, dst row, offset)`` of a convolution, compacted by offset.

  ``dst[p]`` receives ``x[src[p]] @ W[offset]``. For a strided map ``src`` rows are fine (input) rows and
  ``dst`` rows coarse (output) rows; :attr:`T` swaps them for the transposed convolution.

  Attributes:
    src, dst: ``int32[P]`` pair rows; padding pairs hold :data:`SENTINEL`.
    block_offset: ``int32[P // block_size]`` kernel offset of each block.
    num_blocks: ``int32[]`` blocks in use (the rest are padding).
    num_pairs: ``int32[]`` real pairs, counting mirrored and centre pairs (the MACs are ``num_pairs * Cin * Cout``).
    center_mask: ``bool[num_dst]`` rows paired with themselves at offset ``center`` (empty if ``center < 0``).
    kernel_size, dilation: static kernel geometry.
    src_stride, dst_stride: static tensor strides of the two sides.
    num_src, num_dst: static row counts (capacities) of the two sides.
    block_size: static pairs per block.
    blocks_per_step: static blocks processed together (one batched matmul) per loop step; the pair arrays hold a
      whole number of steps.
    center: static offset index handled as identity pairs, or -1.
    mirrored: static; if True, every pair ``(s, d, o)`` also stands for ``(d, s, K - 1 - o)``.
    table, table_t: ``int32[num_dst, K]`` and ``int32[num_src, K]``, the neighbour tables of the map and of its
      transpose (see :meth:`neighbor_table`), or None. Built once by :meth:`with_tables` where the Pallas GPU
      kernels will run (which read the maps in this form), so each convolution on the map reuses them.
  """

  src: jax.Array
  dst: jax.Array
  block_offset: jax.Array
  num_blocks: jax.Array
  num_pairs: jax.Array
  center_mask: jax.Array
  kernel_size: _coords.Triple = dataclasses.field(metadata=dict(static=True))
  dilation: _coords.Triple = dataclasses.field(metadata=dict(static=True))
  src_stride: _coords.Triple = dataclasses.field(metadata=dict(static=True))
  dst_stride: _coords.Triple = dataclasses.field(metadata=dict(static=True))
  num_src: int = dataclasses.field(metadata=dict(static=True))
  num_dst: int = dataclasses.field(metadata=dict(static=True))
  block_size: int = dataclasses.field(metadata=dict(static=True))
  blocks_per_step: int = dataclasses.field(metadata=dict(static=True))
  center: int = dataclasses.field(metadata=dict(static=True))
  mirrored: bool = dataclasses.field(metadata=dict(static=True))
  table: jax.Array | None = None
  table_t: jax.Array | None = None

  @property
  def num_offsets(self) -> int:
    return math.prod(self.kernel_size)

  @property
  def T(self) -> "KernelMap":
    """The transposed map: the same pairs with source and destination swapped."""
    return dataclasses.replace(self, src=self.dst, dst=self.src, src_stride=self.dst_stride,
                               dst_stride=self.src_stride, num_src=self.num_dst, num_dst=self.num_src,
                               table=self.table_t, table_t=self.table)

  def neighbor_table(self) -> jax.Array:
    """``int32[num_dst, K]``: the source row of each (destination row, offset), or -1.

    The dense, output-stationary form of the map (what the GPU kernels and tests use): :attr:`table` when the
    map carries it, else built from the pairs.
    """
    if self.table is not None:
      return self.table
    return neighbor_table(self.src, self.dst, self.block_offset, self.num_blocks, self.center_mask,
                          num_dst=self.num_dst, num_offsets=self.num_offsets, block_size=self.block_size,
                          center=self.center, mirrored=self.mirrored)

  def with_tables(self) -> KernelMap:
    """This map carrying its neighbour tables (:attr:`table`, :attr:`table_t`), built now unless it has them.

    A mirrored (submanifold) map is its own transpose with the offsets reversed, so its transposed table is the
    table with its columns reversed, not a second build.

    Example:
      >>> kmap, x = jsparse3d.ops.kernel_map(x, 3)
      >>> carried = kmap.with_tables()  # what kernel_map returns where the convolutions run on Pallas
      >>> carried.table.shape, carried.table_t.shape
      ((1024, 27), (1024, 27))
    """
    if self.table is not None and self.table_t is not None:
      return self
    table = self.neighbor_table()
    table_t = table[:, ::-1] if self.mirrored else self.T.neighbor_table()
    return dataclasses.replace(self, table=table, table_t=table_t)


def neighbor_table(src, dst, block_offset, num_blocks, center_mask, *, num_dst, num_offsets, block_size, center,
                   mirrored) -> jax.Array:
  """:meth:`KernelMap.neighbor_table` from the map's arrays (as the convolution primitives receive them)."""
  k = num_offsets
  table = jnp.full((num_dst, k), -1, jnp.int32)
  blocks = jnp.arange(block_offset.shape[0], dtype=jnp.int32)
  off = jnp.where(blocks < num_blocks, block_offset, k)
  off = jnp.repeat(off, block_size)
  table = table.at[dst, off].set(src, mode="drop")
  if mirrored:
    table = table.at[src, jnp.where(off < k, k - 1 - off, k)].set(dst, mode="drop")
  if center >= 0:
    rows = jnp.arange(num_dst, dtype=jnp.int32)
    table = table.at[:, center].set(jnp.where(center_mask, rows, -1))
  return table


def block_size_for(num_rows: int) -> int:
  """Pairs per block: large enough to amortise the per-block loop cost, small enough to waste little padding."""
  return 1 << int(np.clip(round(math.log2(max(num_rows, 1) / 100)), 5, 10))


def blocks_per_step_for(block_size: int) -> int:
  """Blocks per loop step: at least 512 pairs, so that small tensors do not pay the loop cost per tiny block.

  (Measured here: at 512-pair blocks, batching more blocks per step gains nothing.)
  """
  return max(1, 512 // block_size)


def _blocks_capacity(kq: int, m: int, block_size: int) -> int:
  """Static block count of a map over ``kq`` offsets and ``m`` rows: the worst case, in whole loop steps."""
  per_step = blocks_per_step_for(block_size)
  return -(-kq * (-(-m // block_size)) // per_step) * per_step


def _pair_shapes(kq: int, m: int, block_size: int):
  """Result shapes of the native map kernels: ``src``, ``dst``, ``block_offset``, ``num_blocks``, ``num_pairs``."""
  blocks_cap = _blocks_capacity(kq, m, block_size)
  rows = jax.ShapeDtypeStruct((blocks_cap * block_size,), jnp.int32)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  return (rows, rows, jax.ShapeDtypeStruct((blocks_cap,), jnp.int32), scalar, scalar)


def _compact_native(table, offset_ids, rows_are_dst: bool, *, block_size: int):
  """:func:`_compact` by the native CPU kernel (``_cpu_maps.cc``); the same arrays."""
  kq, m = table.shape
  ids = jnp.asarray(np.asarray(offset_ids, np.int32))
  return jax.ffi.ffi_call(_native.target("compact"), _pair_shapes(kq, m, block_size), vmap_method="sequential")(
      table, ids, block_size=np.int64(block_size), rows_are_dst=np.int64(rows_are_dst))


def _query_map_native(coords, num_valid, query, query_valid, offsets, offset_ids, *, block_size: int):
  """The compacted pairs ``(row of query[i] + offsets[o] in coords, i)`` by the native CPU kernel, and the error
  bits of ``coords`` (out-of-range or duplicate rows among the valid ones)."""
  shapes = _pair_shapes(len(offset_ids), query.shape[0], block_size) + (jax.ShapeDtypeStruct((), jnp.int32),)
  return jax.ffi.ffi_call(_native.target("query_map"), shapes, vmap_method="sequential")(
      coords, jnp.asarray(num_valid, jnp.int32), query, jnp.asarray(query_valid, jnp.int32),
      jnp.asarray(np.asarray(offsets, np.int32)), jnp.asarray(np.asarray(offset_ids, np.int32)),
      block_size=np.int64(block_size))


def _compact(table, offset_ids, rows_are_dst: bool, *, block_size: int):
  """Compacts a ``[Kq, M]`` partner table into offset-homogeneous blocks of pairs.

  Args:
    table: ``int32[Kq, M]`` partner row of each (offset, row), ``-1`` if none.
    offset_ids: static sequence of Kq kernel offset indices, one per table row.
    rows_are_dst: whether the table's rows are destination rows (else source rows).
  Returns:
    ``(src, dst, block_offset, num_blocks, num_pairs)``; the arrays hold a whole number of loop steps.
  """
  kq, m = table.shape
  bs = block_size
  blocks_cap = _blocks_capacity(kq, m, bs)
  valid = table >= 0
  counts = valid.sum(axis=1, dtype=jnp.int32)
  blocks = (counts + bs - 1) // bs
  first_block = jnp.cumsum(blocks, dtype=jnp.int32) - blocks
  rank = lax.associative_scan(jnp.add, valid.astype(jnp.int32), axis=1) - 1
  pos = jnp.where(valid, first_block[:, None] * bs + rank, SENTINEL).reshape(-1)
  size = blocks_cap * bs
  rows = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (kq, m)).reshape(-1)
  partner = table.reshape(-1)
  pairs = jnp.full((size, 2), SENTINEL, jnp.int32).at[pos].set(
      jnp.stack([partner, rows], axis=1), mode="drop", unique_indices=True)
  src, dst = (pairs[:, 0], pairs[:, 1]) if rows_are_dst else (pairs[:, 1], pairs[:, 0])
  ends = jnp.cumsum(blocks, dtype=jnp.int32)
  which = jnp.sum(jnp.arange(blocks_cap, dtype=jnp.int32)[:, None] >= ends[None, :], axis=1)
  block_offset = jnp.asarray(np.asarray(offset_ids, np.int32))[jnp.minimum(which, kq - 1)]
  return src, dst, block_offset, ends[-1], counts.sum(dtype=jnp.int32)


def _query_table(index, coords, valid, offsets):
  """``(int32[len(offsets), N], errors)``: row of ``coords[i] + offsets[o]`` in ``index`` where ``valid[i]``,
  else -1; ``errors`` holds the Pallas probe's table-full flag."""
  errors = _errors.no_errors()
  if _hash.implementation_of(index) == "pallas":  # the GPU query kernel loops over the offsets itself
    found, flags = _backend.pallas("hash").query_table(index.table, coords, np.asarray(offsets, np.int32))
    found, errors = found.T, _hash.pallas_errors(flags)
  else:
    shift = jnp.concatenate([jnp.zeros((len(offsets), 1), jnp.int32), jnp.asarray(offsets)], axis=1)
    found = _hash.query_index(index, coords[None, :, :] + shift[:, None, :])
  return jnp.where(valid[None, :], found, -1), errors


@functools.partial(jax.jit, static_argnames=("kernel_size", "dilation", "stride"))
def submanifold_map(coords, num_valid, index, kernel_size, dilation, stride) -> tuple[KernelMap, jax.Array]:
  """The map of a stride-1 (submanifold) convolution: output rows are the input rows.

  Args:
    coords: ``int32[N, 4]``; num_valid: ``int32[]``; index: the hash index of ``coords``.
    kernel_size, dilation: kernel geometry; stride: the tensor stride (offsets scale with it).
  Returns:
    ``(kmap, errors)``: ``errors`` holds the query's flags (a full Pallas table).
  """
  return _submanifold(coords, num_valid, index, kernel_size, dilation, stride)


@functools.partial(jax.jit, static_argnames=("kernel_size", "dilation", "stride"))
def submanifold_map_native(coords, num_valid, kernel_size, dilation, stride) -> tuple[KernelMap, jax.Array]:
  """:func:`submanifold_map` by the native CPU kernels, with no hash index: the same map, and the error bits of
  ``coords`` (out-of-range or duplicate rows) that building the index would have raised."""
  return _submanifold(coords, num_valid, None, kernel_size, dilation, stride)


def _submanifold(coords, num_valid, index, kernel_size, dilation, stride):
  """The submanifold map through ``index``, or through the native kernels where ``index`` is None."""
  n = coords.shape[0]
  offsets = _coords.kernel_offsets(kernel_size, dilation, stride)
  k = len(offsets)
  zero = np.flatnonzero(~offsets.any(axis=1))
  center = int(zero[0]) if zero.size else -1
  mirrored = _coords.is_symmetric(kernel_size) and k > 1
  queried = list(range(k // 2)) if mirrored else [o for o in range(k) if o != center]
  bs = block_size_for(n)
  valid = _coords.valid_rows(n, num_valid)
  errors = _errors.no_errors()
  if queried and index is None:
    src, dst, block_offset, num_blocks, num_pairs, errors = _query_map_native(
        coords, num_valid, coords, num_valid, offsets[queried], queried, block_size=bs)
  elif queried:
    table, errors = _query_table(index, coords, valid, offsets[queried])
    src, dst, block_offset, num_blocks, num_pairs = _compact(table, queried, True, block_size=bs)
  else:
    src = dst = block_offset = jnp.zeros((0,), jnp.int32)
    num_blocks = num_pairs = jnp.zeros((), jnp.int32)
  num_pairs = num_pairs * (2 if mirrored else 1) + (num_valid if center >= 0 else 0)
  kmap = KernelMap(src, dst, block_offset, num_blocks, num_pairs.astype(jnp.int32),
                   valid if center >= 0 else jnp.zeros((0,), bool), kernel_size, dilation, stride, stride, n, n,
                   bs, blocks_per_step_for(bs), center, mirrored)
  return kmap, errors


@functools.partial(jax.jit, static_argnames=("factor", "capacity"))
def downsample_coords(coords, num_valid, factor, capacity=None):
  """Output coordinates of a strided op: ``unique(floor(c / factor) * factor)`` per batch.

  Output rows are in order of first occurrence among the input rows, so the result is deterministic.

  Args:
    capacity: static output rows (default ``N``); output sites past it set ``CAPACITY_OVERFLOW``.
  Returns:
    ``(out_coords int32[capacity, 4], out_num_valid int32[], out_index HashIndex, out_row int32[N])`` where
    ``out_row[i]`` is the output row of input row ``i`` (-1 for padding).
  """
  n = coords.shape[0]
  if n == 0:  # nothing to gather from: every output row is padding
    out_coords = jnp.broadcast_to(jnp.array([-1, 0, 0, 0], jnp.int32), (capacity or 0, 4))
    zero = jnp.zeros((), jnp.int32)
    return out_coords, zero, _hash._build(out_coords, zero), jnp.zeros((0,), jnp.int32)
  if capacity is not None and capacity != n:
    out_coords, out_nv, _, out_row = downsample_coords(coords, num_valid, factor)
    overflow = _errors.flag(out_nv > capacity, _errors.CAPACITY_OVERFLOW)
    if capacity < n:
      out_coords, out_nv = out_coords[:capacity], jnp.minimum(out_nv, capacity)
      out_row = jnp.where(out_row < capacity, out_row, -1)
    else:
      out_coords = jnp.concatenate([out_coords, jnp.broadcast_to(jnp.array([-1, 0, 0, 0], jnp.int32),
                                                                 (capacity - n, 4))])
    index = _hash._build(out_coords, out_nv)
    return out_coords, out_nv, dataclasses.replace(index, errors=index.errors | overflow), out_row
  valid = _coords.valid_rows(n, num_valid)
  down = _coords.downsample(coords, factor)
  ok = _coords.in_range(down)
  hi, lo = _coords.pack_keys(down)
  slots, key_hi, key_lo, num_overflow, stored, first = _hash._insert(hi, lo, valid & ok)
  rank = jnp.cumsum(first, dtype=jnp.int32) - 1
  out_num_valid = jnp.sum(first, dtype=jnp.int32)
  pad = jnp.array([-1, 0, 0, 0], jnp.int32)
  to_out = jnp.where(first, rank, n)
  out_coords = jnp.broadcast_to(pad, (n, 4)).at[to_out].set(down, mode="drop", unique_indices=True)
  # Re-number the index from input rows to output rows: it is then the output tensor's index.
  slots = jnp.where(slots >= 0, rank[jnp.maximum(slots, 0)], -1)
  out_hi = jnp.zeros((n,), jnp.uint32).at[to_out].set(key_hi, mode="drop", unique_indices=True)
  out_lo = jnp.zeros((n,), jnp.uint32).at[to_out].set(key_lo, mode="drop", unique_indices=True)
  out_row = jnp.where(stored >= 0, rank[jnp.maximum(stored, 0)], -1)
  errors = _errors.flag(jnp.any(valid & ~ok), _errors.OUT_OF_RANGE)
  return out_coords, out_num_valid, _hash.HashIndex(slots, out_hi, out_lo, num_overflow, errors), out_row


@functools.partial(jax.jit, static_argnames=("offsets", "factor", "capacity"))
def reached_coords(coords, num_valid, offsets, factor, capacity):
  """The distinct sites ``c + offsets[o]`` over the valid rows ``c`` that are multiples of ``factor``: the output
  coordinates of the padded (dense-rule) convolution and of the generative transposed convolution.

  Args:
    coords: ``int32[N, 4]``; num_valid: ``int32[]``.
    offsets: static tuple of ``(dx, dy, dz)`` added to every row (batch kept).
    factor: static output stride: a reached site is kept where every axis is a multiple of it.
    capacity: static output rows; more distinct sites set ``CAPACITY_OVERFLOW``.
  Returns:
    ``(out_coords int32[capacity, 4] sorted by (batch, x, y, z), out_num_valid int32[], errors int32[])``.
  """
  n, k = coords.shape[0], len(offsets)
  shift = jnp.asarray(np.asarray(offsets, np.int32).reshape(k, 3))
  cand = jnp.concatenate([jnp.broadcast_to(coords[:, None, :1], (n, k, 1)), coords[:, None, 1:] + shift[None]],
                         axis=2).reshape(n * k, 4)
  reached = jnp.repeat(_coords.valid_rows(n, num_valid), k)
  reached = reached & jnp.all(cand[:, 1:] % jnp.asarray([factor], jnp.int32) == 0, axis=1)
  ok = _coords.in_range(cand)
  keep = reached & ok
  hi, lo = _coords.pack_keys(cand)
  drop, hi, lo, rows = lax.sort(((~keep).astype(jnp.uint32), hi, lo, jnp.arange(n * k, dtype=jnp.int32)),
                                num_keys=3)
  first = (drop == 0) & jnp.concatenate([jnp.ones((1,), bool), (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])])
  rank = jnp.cumsum(first, dtype=jnp.int32) - 1
  count = jnp.sum(first, dtype=jnp.int32)
  target = jnp.where(first & (rank < capacity), rank, capacity)
  out = jnp.broadcast_to(jnp.array([-1, 0, 0, 0], jnp.int32), (capacity, 4)).at[target].set(
      cand[rows], mode="drop", unique_indices=True)
  errors = (_errors.flag(jnp.any(reached & ~ok), _errors.OUT_OF_RANGE)
            | _errors.flag(count > capacity, _errors.CAPACITY_OVERFLOW))
  return out, jnp.minimum(count, capacity), errors


@functools.partial(jax.jit, static_argnames=("factor", "capacity"))
def downsample_coords_native(coords, num_valid, factor, capacity=None):
  """:func:`downsample_coords` by the native CPU kernel, without the output's hash index.

  Returns:
    ``(out_coords int32[capacity, 4], out_num_valid int32[], out_row int32[N], errors int32[])``, the first three
    equal to :func:`downsample_coords`'s.
  """
  n = coords.shape[0]
  capacity = n if capacity is None else capacity
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  shapes = (jax.ShapeDtypeStruct((capacity, 4), jnp.int32), scalar, jax.ShapeDtypeStruct((n,), jnp.int32), scalar)
  fx, fy, fz = (np.int64(f) for f in factor)
  return jax.ffi.ffi_call(_native.target("downsample"), shapes, vmap_method="sequential")(
      coords, jnp.asarray(num_valid, jnp.int32), fx=fx, fy=fy, fz=fz)


def query_rows_native(coords, num_valid, query):
  """The row of each ``query`` coordinate (``int32[Q, 4]``) among the first ``num_valid`` rows of ``coords``, by
  the native CPU kernel, without a hash index: ``_hash.query_index`` on the index of ``coords``, the same rows.

  Returns:
    ``(rows int32[Q], errors int32[])``: -1 where a query is absent, padding or out of range; the error bits of
    ``coords`` that building their index would raise (out of range, duplicates).
  """
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  shapes = (jax.ShapeDtypeStruct((query.shape[0],), jnp.int32), scalar)
  return jax.ffi.ffi_call(_native.target("query_rows"), shapes, vmap_method="sequential")(
      coords, jnp.asarray(num_valid, jnp.int32), query)


@functools.partial(jax.jit, static_argnames=("kernel_size", "stride", "dilation", "in_stride", "padding"))
def strided_map(coords, num_valid, index, out_coords, out_num_valid, out_row, kernel_size, stride, dilation,
                in_stride, padding=None) -> tuple[KernelMap, jax.Array]:
  """The map of a strided convolution from ``coords`` (fine) to ``out_coords`` (coarse), and the error flags of
  building it (out-of-range or duplicate rows seen by the native kernels, a full Pallas table).

  ``out_row`` (from :func:`downsample_coords`, or None) enables the fast path when the kernel tiles the stride
  exactly (``k == s <= 2``, dilation 1): every input row then lies in exactly one output's window, at a known
  offset, and no hash query is needed. ``index`` (the hash index of ``coords``) None builds the map with the
  native CPU kernels instead (the same map). ``padding`` (per axis, or None) selects the dense-rule offsets of
  :func:`jsparse3d._coords.kernel_offsets`.
  """
  n, n_out = coords.shape[0], out_coords.shape[0]
  offsets = _coords.kernel_offsets(kernel_size, dilation, in_stride, padding)
  k = len(offsets)
  bs = block_size_for(max(n, n_out))
  tiles = (all(kk == s and kk <= 2 for kk, s in zip(kernel_size, stride)) and dilation == (1, 1, 1)
           and padding is None)
  errors = _errors.no_errors()
  if tiles and out_row is not None:
    q = jnp.take(out_coords, jnp.maximum(out_row, 0), axis=0)
    local = (coords[:, 1:] - q[:, 1:]) // jnp.asarray([in_stride], jnp.int32)
    o = (local[:, 0] * kernel_size[1] + local[:, 1]) * kernel_size[2] + local[:, 2]
    hit = (jnp.arange(k, dtype=jnp.int32)[:, None] == o[None, :]) & (out_row >= 0)[None, :]
    table = jnp.where(hit, out_row[None, :], -1)
    compact = _compact if index is not None else _compact_native
    src, dst, block_offset, num_blocks, num_pairs = compact(table, range(k), False, block_size=bs)
  elif index is None:
    src, dst, block_offset, num_blocks, num_pairs, errors = _query_map_native(
        coords, num_valid, out_coords, out_num_valid, offsets, range(k), block_size=bs)
  else:
    table, errors = _query_table(index, out_coords, _coords.valid_rows(n_out, out_num_valid), offsets)
    src, dst, block_offset, num_blocks, num_pairs = _compact(table, range(k), True, block_size=bs)
  out_stride = tuple(a * b for a, b in zip(in_stride, stride))
  return KernelMap(src, dst, block_offset, num_blocks, num_pairs, jnp.zeros((0,), bool), kernel_size, dilation,
                   in_stride, out_stride, n, n_out, bs, blocks_per_step_for(bs), -1, False), errors
