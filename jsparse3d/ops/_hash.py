"""Coordinate hash index: build once per coordinate set, query for any coordinates.

A multi-level hash table over the 64-bit keys of :mod:`jsparse3d._coords`, laid out for vectorised lookups on
CPU, where the cost is cache misses and every loop round touches every query:

- four *single-choice* levels of 4N, N/2, N/8 and N/32 slots (independent hash functions). A key tries one slot
  per level; the smallest row among those that want a slot gets it (a scatter-min, so the table is the same on
  every run) and the rest try the next level. About 11% of keys reach level 2, 1% level 3 and a handful level 4.
- an *overflow* level of 2N slots with linear probing, for whatever the first four leave (built by parallel
  probing rounds, so it can never fail and never fills). On real inputs it is almost always empty.

A query checks its slot in each single-choice level in one pass, with no loop, and probes the overflow level only
when that level is not empty. Slots hold row numbers; a candidate row is confirmed by comparing the stored keys
of the rows (``key_hi``/``key_lo``), which stay in cache. A key that meets its own key already stored is a
duplicate; the row stored is the first occurrence.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jsparse3d import _coords
from jsparse3d import _errors
from jsparse3d.ops import _backend

_SALTS = (0x9E3779B9, 0x7F4A7C15, 0x94D049BB, 0xBF58476D, 0x2545F491)
_SINGLE = 4  # single-choice levels before the overflow level


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HashIndex(_errors.Flagged):
  """A hash table from ``(batch, x, y, z)`` to row numbers.

  Attributes:
    slots: ``int32[sum(level sizes)]`` row stored in each slot of every level (see :func:`level_sizes`), ``-1``
      for an empty slot.
    key_hi, key_lo: ``uint32[N]`` the packed key of each row (zero for rows not stored).
    num_overflow: ``int32[]`` keys stored in the overflow level.
    errors: ``int32[]`` error flags (out-of-range or duplicate coordinates seen while building).
  """

  slots: jax.Array
  key_hi: jax.Array
  key_lo: jax.Array
  num_overflow: jax.Array
  errors: jax.Array

  @property
  def capacity(self) -> int:
    return self.key_hi.shape[-1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PallasIndex(_errors.Flagged):
  """The GPU kernels' hash table (:class:`pallas_kernels.hash.api.HashTable`) with jsparse3d's error flags.

  Attributes:
    table: the table, as the kernels take it.
    errors: ``int32[]`` error flags (out-of-range or duplicate coordinates, a table-full build).
  """

  table: Any
  errors: jax.Array


def pallas_errors(flags: jax.Array) -> jax.Array:
  """jsparse3d's error flags for the status word of a :mod:`pallas_kernels` hash or devoxelize call."""
  api = _backend.pallas("hash")
  return (_errors.flag((flags & api.OUT_OF_RANGE) != 0, _errors.OUT_OF_RANGE)
          | _errors.flag((flags & api.TABLE_FULL) != 0, _errors.TABLE_FULL)
          | _errors.flag((flags & api.DUPLICATE) != 0, _errors.DUPLICATE_COORDS))


def _pow2(n: int) -> int:
  return max(64, 1 << (max(int(n), 1) - 1).bit_length())


def level_sizes(capacity: int) -> tuple[int, ...]:
  """Static slot counts of the levels for ``capacity`` rows: 4N, N/2, N/8, N/32 (single choice), 2N (overflow)."""
  n = capacity
  return _pow2(4 * n), _pow2(n // 2), _pow2(n // 8), _pow2(n // 32), _pow2(2 * n)


def _stored_key_is(key_hi, key_lo, rows, hi, lo):
  """``bool[...]``: whether the key stored for each row in ``rows`` (clamped to 0 where negative) is ``(hi, lo)``."""
  r = jnp.maximum(rows, 0)
  return (key_hi[r] == hi) & (key_lo[r] == lo)


def _slot(hi, lo, level: int, size: int):
  h = _coords.hash_keys(hi + jnp.uint32(_SALTS[level]), lo)
  return (h & jnp.uint32(size - 1)).astype(jnp.int32)


def _insert(hi, lo, active):
  """Inserts keys into a new index.

  Args:
    hi, lo: ``uint32[N]`` packed keys.
    active: ``bool[N]`` which rows to insert.
  Returns:
    ``(slots, key_hi, key_lo, num_overflow, stored, first)``: the index arrays, ``int32[N]`` the row stored under
    each active row's key (itself, or the first occurrence of a duplicate; -1 if inactive) and ``bool[N]`` whether
    the row is that stored row.
  """
  n = hi.shape[0]
  sizes = level_sizes(n)
  rows = jnp.arange(n, dtype=jnp.int32)
  key_hi = jnp.where(active, hi, jnp.uint32(0))
  key_lo = jnp.where(active, lo, jnp.uint32(0))
  pending = active
  stored = jnp.full((n,), -1, jnp.int32)
  tables = []
  for level, size in enumerate(sizes[:_SINGLE]):
    s = _slot(hi, lo, level, size)
    claim = jnp.full((size,), n, jnp.int32).at[jnp.where(pending, s, size)].min(rows, mode="drop")
    winner = claim[s]
    win = pending & (winner == rows)
    dup = pending & (winner < rows) & _stored_key_is(key_hi, key_lo, jnp.minimum(winner, n - 1), hi, lo)
    tables.append(jnp.full((size,), -1, jnp.int32).at[jnp.where(win, s, size)].set(
        rows, mode="drop", unique_indices=True))
    stored = jnp.where(win, rows, jnp.where(dup, winner, stored))
    pending = pending & ~(win | dup)
  overflow, stored = _insert_overflow(hi, lo, pending, stored, key_hi, key_lo, sizes[_SINGLE])
  tables.append(overflow)
  first = active & (stored == rows)
  num_overflow = jnp.sum(pending & first, dtype=jnp.int32)
  return jnp.concatenate(tables), key_hi, key_lo, num_overflow, stored, first


def _insert_overflow(hi, lo, pending, stored, key_hi, key_lo, size):
  """Linear-probing insertion of the remaining keys, in parallel rounds.

  Every pending key claims its current slot with a scatter-min of its row; the loser of a round stays put and, next
  round, either meets its own key (a duplicate) or moves on. Keys that meet a different key move to the next slot.
  """
  n = hi.shape[0]
  mask = size - 1
  rows = jnp.arange(n, dtype=jnp.int32)

  def cond(state):
    return jnp.any(state[2])

  def body(state):
    table, slot, pending, stored = state
    occupant = table[slot]
    occupied = occupant >= 0
    same = pending & occupied & _stored_key_is(key_hi, key_lo, occupant, hi, lo)
    empty = pending & ~occupied
    claim = jnp.full((size,), n, jnp.int32).at[jnp.where(empty, slot, size)].min(rows, mode="drop")
    win = empty & (claim[slot] == rows)
    table = table.at[jnp.where(win, slot, size)].set(rows, mode="drop", unique_indices=True)
    stored = jnp.where(win, rows, jnp.where(same, occupant, stored))
    slot = jnp.where(pending & occupied & ~same, (slot + 1) & mask, slot)
    return table, slot, pending & ~(same | win), stored

  init = (jnp.full((size,), -1, jnp.int32), _slot(hi, lo, _SINGLE, size), pending, stored)
  table, _, _, stored = lax.while_loop(cond, body, init)
  return table, stored


def _probe(index: HashIndex, hi, lo, active):
  """``int32[...]``: the row stored under each key, ``-1`` where absent or inactive."""
  sizes = level_sizes(index.capacity)
  found = jnp.full(hi.shape, -1, jnp.int32)
  base = 0

  def check(row, found):
    hit = active & (row >= 0) & _stored_key_is(index.key_hi, index.key_lo, row, hi, lo)
    return jnp.where(hit, row, found), hit

  for level, size in enumerate(sizes[:_SINGLE]):
    found, _ = check(index.slots[base + _slot(hi, lo, level, size)], found)
    base += size
  mask = sizes[_SINGLE] - 1

  def cond(state):
    return jnp.any(state[1])

  def body(state):
    slot, pending, found = state
    row = index.slots[base + slot]
    found, hit = check(row, found)
    pending = pending & ~hit & (row >= 0)
    return (slot + 1) & mask, pending, found

  init = (_slot(hi, lo, _SINGLE, sizes[_SINGLE]), active & (index.num_overflow > 0), found)
  return lax.while_loop(cond, body, init)[2]


def _check_coords_array(coords, name: str) -> None:
  if not hasattr(coords, "shape") or not hasattr(coords, "dtype"):
    raise TypeError(f"{name} must be an array, got {type(coords).__name__}.")
  if coords.ndim < 1 or coords.shape[-1] != 4:
    raise ValueError(f"{name} must have shape [..., 4] with columns (batch, x, y, z), got {coords.shape}.")
  if coords.dtype != jnp.int32:
    raise TypeError(f"{name} must be int32, got {coords.dtype}. Convert with .astype(jnp.int32).")


def implementation_of(index) -> str:
  """``"xla"`` for a :class:`HashIndex`, ``"pallas"`` for the GPU kernels' table."""
  if isinstance(index, HashIndex):
    return "xla"
  if isinstance(index, PallasIndex):
    return "pallas"
  raise TypeError(f"index must be a HashIndex or a PallasIndex from build_index, got {type(index).__name__}.")


def build_index(coords: jax.Array, num_valid: jax.Array | int, *, implementation: str | None = None):
  """Builds the hash index of a coordinate set.

  Rows ``[0, num_valid)`` are inserted; later rows are padding. Out-of-range or duplicate coordinates among the
  valid rows set the index's error flags (raised at once outside ``jit``, by :func:`jsparse3d.raise_if_error`
  inside). Linear in the number of rows; the same input gives the same table.

  Args:
    coords: ``int32[N, 4]`` rows ``(batch, x, y, z)``.
    num_valid: ``int32[]`` number of valid rows.
    implementation: ``"xla"`` (the multi-level table below, for any backend), ``"pallas"`` (the GPU kernels'
      linear-probing table of :mod:`pallas_kernels.hash`; interpret mode on CPU) or None: Pallas on a GPU
      backend, else XLA.
  Returns:
    A :class:`HashIndex` with the static level sizes of :func:`level_sizes` (``N``), or for ``"pallas"`` a
    :class:`PallasIndex` (the GPU kernels' table). :func:`query_index` takes either.

  Example:
    >>> index = build_index(x.coords, x.num_valid)
    >>> rows = query_index(index, x.coords)  # == arange(N) on valid rows
  """
  _check_coords_array(coords, "coords")
  if coords.ndim != 2:
    raise ValueError(f"coords must have shape [N, 4], got {coords.shape}.")
  implementation = _backend.resolve("index", implementation)
  if implementation == "pallas":
    table = _backend.pallas("hash").build_table(coords, num_valid)
    index = PallasIndex(table, pallas_errors(table.flags))
  else:
    index = _build(coords, jnp.asarray(num_valid, jnp.int32))
  _errors.check_now(index.errors, "build_index")
  return index


@jax.jit
def _build(coords, num_valid) -> HashIndex:
  valid = _coords.valid_rows(coords.shape[0], num_valid)
  ok = _coords.in_range(coords)
  hi, lo = _coords.pack_keys(coords)
  slots, key_hi, key_lo, num_overflow, _, first = _insert(hi, lo, valid & ok)
  errors = (_errors.flag(jnp.any(valid & ~ok), _errors.OUT_OF_RANGE)
            | _errors.flag(jnp.any(valid & ok & ~first), _errors.DUPLICATE_COORDS))
  return HashIndex(slots, key_hi, key_lo, num_overflow, errors)


def query_index(index, query_coords: jax.Array, *, implementation: str | None = None,
                with_errors: bool = False):
  """Looks up coordinates in a hash index.

  Args:
    index: from :func:`build_index` (either kind; the query runs with the kernels that built it).
    query_coords: ``int32[..., 4]`` rows ``(batch, x, y, z)``; any leading shape.
    implementation: None, or ``"xla"`` / ``"pallas"`` to insist on the kind of ``index``.
    with_errors: also return the query's error flags (the Pallas probe's ``TABLE_FULL``), for use under ``jit``
      where they cannot raise; eagerly a flagged query raises either way. (A full table is also flagged on the
      index by :func:`build_index`.)
  Returns:
    ``int32[...]``: the row holding each query coordinate, or ``-1`` where it is absent, padding (batch ``-1``)
    or outside the supported range; with ``with_errors``, ``(rows, errors int32[])``.
  """
  kind = implementation_of(index)
  if implementation is not None and _backend.resolve("index", implementation) != kind:
    raise ValueError(f"query_index(implementation={implementation!r}) got an index built with {kind!r}; build it "
                     f"with build_index(..., implementation={implementation!r}).")
  _check_coords_array(query_coords, "query_coords")
  if kind == "pallas":
    rows, flags = _backend.pallas("hash").query_table(index.table, query_coords.reshape(-1, 4))
    errors = pallas_errors(flags)
    _errors.check_now(errors, "query_index")
    rows = rows.reshape(query_coords.shape[:-1])
  else:
    rows, errors = _query(index, query_coords), _errors.no_errors()
  return (rows, errors) if with_errors else rows


@jax.jit
def _query(index, query_coords):
  ok = _coords.in_range(query_coords)
  hi, lo = _coords.pack_keys(query_coords)
  return _probe(index, hi, lo, ok)
