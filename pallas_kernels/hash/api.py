"""The GPU coordinate hash table: validation, padding and block sizes around :mod:`.kernel`.

``build_table(coords, num_valid)`` inserts rows ``[0, num_valid)`` and flags out-of-range and duplicate
coordinates (and a probe that ran past its step limit) in the table's ``flags``; ``query_table(table, coords,
offsets)`` returns, for every coordinate row and kernel offset, the row stored under ``coords + offset`` or -1,
and its own flags. Flags are ``int32[]`` words of the bits below, for the caller to raise or translate.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import _config
from pallas_kernels.hash import kernel
from pallas_kernels.hash import keys

OUT_OF_RANGE = 1  # a valid row's coordinate is outside keys.COORD_MIN..COORD_MAX or its batch outside 0..MAX_BATCH
TABLE_FULL = 2  # an insert or probe ran past its step limit: the table or a query is incomplete
DUPLICATE = 4  # two valid rows hold the same coordinate


def flag(condition, bit: int):
  """``int32[]``: ``bit`` where ``condition`` holds anywhere, else 0."""
  return jnp.where(jnp.any(condition), jnp.int32(bit), jnp.int32(0))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HashTable:
  """A linear-probing table of row numbers.

  Attributes:
    slots: ``float32[capacity + 1]`` row in each slot, exact below 2^24 (-1: empty); the last slot is the build
      kernel's scratch.
    key_hi, key_lo: ``uint32[N]`` packed key of each row (zero for rows not stored).
    flags: ``int32[]``: ``OUT_OF_RANGE``, ``TABLE_FULL`` and ``DUPLICATE`` bits found while building.
  """
  slots: jax.Array
  key_hi: jax.Array
  key_lo: jax.Array
  flags: jax.Array

  @property
  def capacity(self) -> int:
    return self.slots.shape[-1] - 1


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Rows per program of the build and query kernels (powers of two >= 16) and the Triton launch parameters.

  A build program compares its lanes' target slots pairwise each step (``build_rows^2`` comparisons), so build
  blocks stay small.
  """
  build_rows: int = 32
  query_rows: int = 128
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    _config.check_block_sizes(self, ("build_rows", "query_rows"))


def default_capacity(num_rows: int) -> int:
  """The smallest power of two >= 2 x rows (and >= 64)."""
  return _config.next_pow2(2 * num_rows, 64)


def _check_coords(coords, what):
  if not hasattr(coords, "dtype") or coords.ndim != 2 or coords.shape[1] != 4:
    raise ValueError(f"{what}: coords must be an int32 [N, 4] array of (batch, x, y, z) rows, got "
                     f"{getattr(coords, 'shape', type(coords).__name__)}.")
  if coords.dtype != jnp.int32:
    raise TypeError(f"{what}: coords must be int32, got {coords.dtype}; convert with .astype(jnp.int32).")


def _padded_columns(coords, rows):
  """``int32[4, N_p]``: the coordinates column-major, padded with batch -1 rows to a multiple of ``rows``."""
  return _config.pad(coords, 0, _config.round_up(coords.shape[0], rows), -1).T


def build_table(coords, num_valid, *, capacity: int | None = None, block_sizes: BlockSizes | None = None,
                interpret: bool | None = None) -> HashTable:
  """Builds the table of ``coords[:num_valid]`` (int32 [N, 4]); ``capacity``: a power of two >= 2N."""
  _check_coords(coords, "build_table")
  n = coords.shape[0]
  capacity = default_capacity(n) if capacity is None else int(capacity)
  if capacity & (capacity - 1) or capacity < 2 * n:
    raise ValueError(f"build_table: capacity must be a power of two >= 2 x rows = {2 * n}, got {capacity}.")
  if n >= kernel.MAX_ROWS:
    raise ValueError(f"build_table: {n} rows; the GPU table holds fewer than 2^24 rows. Split the batch.")
  bs = block_sizes or BlockSizes()
  num_valid = jnp.asarray(num_valid, jnp.int32).reshape(1)
  slots, status = kernel.build(_padded_columns(coords, bs.build_rows), num_valid, capacity=capacity,
                               bm=bs.build_rows, num_warps=bs.num_warps, num_stages=bs.num_stages, interpret=interpret)
  rows = jnp.arange(n, dtype=jnp.int32)
  ok, hi, lo = keys.pack_rows(coords)
  stored = (rows < num_valid[0]) & ok
  key_hi, key_lo = jnp.where(stored, hi, jnp.uint32(0)), jnp.where(stored, lo, jnp.uint32(0))
  table = HashTable(slots, key_hi, key_lo, jnp.int32(0))
  found, q_flags = query_table(table, jnp.where(stored[:, None], coords, -1), block_sizes=bs, interpret=interpret)
  duplicate = stored & (found[:, 0] != rows)  # a row whose key finds another row first
  flags = (flag(status[:n] == kernel.OUT_OF_RANGE, OUT_OF_RANGE) | flag(status == kernel.UNFINISHED, TABLE_FULL)
           | flag(duplicate, DUPLICATE) | q_flags)
  return dataclasses.replace(table, flags=flags)


def query_table(table: HashTable, coords, offsets=((0, 0, 0),), *, block_sizes: BlockSizes | None = None,
                interpret: bool | None = None):
  """``(rows int32[M, K], flags int32[])``: the row stored under ``coords[m] + offsets[k]`` (batch unchanged) or
  -1 (absent, out of range, or ``coords[m]`` is padding with batch -1)."""
  if not isinstance(table, HashTable):
    raise TypeError(f"query_table: table must be a HashTable from build_table, got {type(table).__name__}.")
  _check_coords(coords, "query_table")
  offsets = jnp.asarray(np.asarray(offsets, np.int32).reshape(-1, 3)) if not isinstance(offsets, jax.Array) \
      else offsets.astype(jnp.int32).reshape(-1, 3)
  bs = block_sizes or BlockSizes()
  m = coords.shape[0]
  out, status = kernel.query(offsets, _padded_columns(coords, bs.query_rows), table.slots, table.key_hi,
                             table.key_lo, bm=bs.query_rows, num_warps=bs.num_warps, num_stages=bs.num_stages,
                             interpret=interpret)
  return out[:, :m].T, flag(status == kernel.UNFINISHED, TABLE_FULL)
