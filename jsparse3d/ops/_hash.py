"""Coordinate hash index: build once per coordinate set, query for any coordinates.

An open-addressing (linear-probing) table over the 64-bit keys of :mod:`jsparse3d._coords`. The table holds at
least four slots per row, so it can never fill and most probes end at the first slot. Insertion runs in parallel
rounds: every pending key claims its current slot with a scatter-min of its row id, so the smallest row wins and
the table is the same on every run. A key that finds its own key already stored is a duplicate; the row stored
is the first occurrence. Queries probe all keys together, one gather per round, until each finds its key or an
empty slot.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jsparse3d import _coords
from jsparse3d import _errors


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HashIndex(_errors.Flagged):
  """A hash table from ``(batch, x, y, z)`` to row numbers.

  Attributes:
    table_hi, table_lo: ``uint32[T]`` the stored keys' high and low words.
    table_row: ``int32[T]`` the row stored in each slot, ``-1`` for an empty slot.
    errors: ``int32[]`` error flags (out-of-range or duplicate coordinates seen while building).
  """

  table_hi: jax.Array
  table_lo: jax.Array
  table_row: jax.Array
  errors: jax.Array

  @property
  def table_size(self) -> int:
    return self.table_hi.shape[-1]


def table_size_for(capacity: int) -> int:
  """The static table size for ``capacity`` rows: a power of two with at least 4 slots per row."""
  return max(64, 1 << (4 * max(capacity, 1) - 1).bit_length())


def _insert(hi, lo, active, table_size):
  """Inserts keys in parallel rounds.

  Args:
    hi, lo: ``uint32[N]`` packed keys.
    active: ``bool[N]`` which rows to insert.
    table_size: static power of two, larger than the number of active rows.
  Returns:
    ``(table_hi, table_lo, table_row, slot, first)``: the table, ``int32[N]`` the slot each active row ended in
    (its own or its duplicate's), ``bool[N]`` whether the row is the stored (first) occurrence of its key.
  """
  n = hi.shape[0]
  mask = table_size - 1
  rows = jnp.arange(n, dtype=jnp.int32)
  home = (_coords.hash_keys(hi, lo) & jnp.uint32(mask)).astype(jnp.int32)

  def cond(state):
    return jnp.any(state[4])

  def body(state):
    t_hi, t_lo, t_row, slot, pending, first = state
    s_row = t_row[slot]
    occupied = s_row >= 0
    same = pending & occupied & (t_hi[slot] == hi) & (t_lo[slot] == lo)
    empty = pending & ~occupied
    claim = jnp.full((table_size,), n, jnp.int32).at[jnp.where(empty, slot, table_size)].min(rows, mode="drop")
    win = empty & (claim[slot] == rows)
    target = jnp.where(win, slot, table_size)
    t_row = t_row.at[target].set(rows, mode="drop", unique_indices=True)
    t_hi = t_hi.at[target].set(hi, mode="drop", unique_indices=True)
    t_lo = t_lo.at[target].set(lo, mode="drop", unique_indices=True)
    # A loser of this round's claim stays put: next round it sees the winner and either matches it (a duplicate)
    # or moves on. Keys that see a different key move to the next slot.
    advance = pending & occupied & ~same
    slot = jnp.where(advance, (slot + 1) & mask, slot)
    return t_hi, t_lo, t_row, slot, pending & ~(same | win), first | win

  init = (jnp.zeros((table_size,), jnp.uint32), jnp.zeros((table_size,), jnp.uint32),
          jnp.full((table_size,), -1, jnp.int32), home, active, jnp.zeros((n,), bool))
  t_hi, t_lo, t_row, slot, _, first = lax.while_loop(cond, body, init)
  return t_hi, t_lo, t_row, slot, first


def _probe(index: HashIndex, hi, lo, active):
  """``int32[...]``: the row stored under each key, ``-1`` where absent or inactive."""
  mask = index.table_size - 1
  slot = (_coords.hash_keys(hi, lo) & jnp.uint32(mask)).astype(jnp.int32)

  def cond(state):
    return jnp.any(state[1])

  def body(state):
    slot, pending, found = state
    s_row = index.table_row[slot]
    hit = pending & (s_row >= 0) & (index.table_hi[slot] == hi) & (index.table_lo[slot] == lo)
    found = jnp.where(hit, s_row, found)
    pending = pending & ~hit & (s_row >= 0)
    return jnp.where(pending, (slot + 1) & mask, slot), pending, found

  init = (slot, active, jnp.full(hi.shape, -1, jnp.int32))
  return lax.while_loop(cond, body, init)[2]


def _check_coords_array(coords, name: str) -> None:
  if not hasattr(coords, "shape") or not hasattr(coords, "dtype"):
    raise TypeError(f"{name} must be an array, got {type(coords).__name__}.")
  if coords.ndim < 1 or coords.shape[-1] != 4:
    raise ValueError(f"{name} must have shape [..., 4] with columns (batch, x, y, z), got {coords.shape}.")
  if coords.dtype != jnp.int32:
    raise TypeError(f"{name} must be int32, got {coords.dtype}. Convert with .astype(jnp.int32).")


def build_index(coords: jax.Array, num_valid: jax.Array | int) -> HashIndex:
  """Builds the hash index of a coordinate set.

  Rows ``[0, num_valid)`` are inserted; later rows are padding. Out-of-range or duplicate coordinates among the
  valid rows set the index's error flags (raised at once outside ``jit``, by :func:`jsparse3d.raise_if_error`
  inside). Linear in the number of rows; the same input gives the same table.

  Args:
    coords: ``int32[N, 4]`` rows ``(batch, x, y, z)``.
    num_valid: ``int32[]`` number of valid rows.
  Returns:
    A :class:`HashIndex` whose table has ``table_size_for(N)`` slots.

  Example:
    >>> index = build_index(x.coords, x.num_valid)
    >>> rows = query_index(index, x.coords)  # == arange(N) on valid rows
  """
  _check_coords_array(coords, "coords")
  if coords.ndim != 2:
    raise ValueError(f"coords must have shape [N, 4], got {coords.shape}.")
  index = _build(coords, jnp.asarray(num_valid, jnp.int32))
  _errors.check_now(index.errors, "build_index")
  return index


@jax.jit
def _build(coords, num_valid) -> HashIndex:
  n = coords.shape[0]
  valid = jnp.arange(n, dtype=jnp.int32) < num_valid
  ok = _coords.in_range(coords)
  hi, lo = _coords.pack_keys(coords)
  t_hi, t_lo, t_row, _, first = _insert(hi, lo, valid & ok, table_size_for(n))
  errors = (_errors.flag(jnp.any(valid & ~ok), _errors.OUT_OF_RANGE)
            | _errors.flag(jnp.any(valid & ok & ~first), _errors.DUPLICATE_COORDS))
  return HashIndex(t_hi, t_lo, t_row, errors)


def query_index(index: HashIndex, query_coords: jax.Array) -> jax.Array:
  """Looks up coordinates in a hash index.

  Args:
    index: from :func:`build_index`.
    query_coords: ``int32[..., 4]`` rows ``(batch, x, y, z)``; any leading shape.
  Returns:
    ``int32[...]``: the row holding each query coordinate, or ``-1`` where it is absent, padding (batch ``-1``)
    or outside the supported range.
  """
  if not isinstance(index, HashIndex):
    raise TypeError(f"index must be a HashIndex from build_index, got {type(index).__name__}.")
  _check_coords_array(query_coords, "query_coords")
  return _query(index, query_coords)


@jax.jit
def _query(index, query_coords):
  ok = _coords.in_range(query_coords)
  hi, lo = _coords.pack_keys(query_coords)
  return _probe(index, hi, lo, ok)
