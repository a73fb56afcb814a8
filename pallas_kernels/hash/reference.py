"""Pure-jnp reference of the GPU coordinate hash table: ordered linear probing over ``capacity`` slots (a power
of two), inserting rows one at a time in row order, and probing queries until their key or an empty slot.

Slots hold row numbers (-1: empty); keys are the packed 64-bit ``(hi, lo)`` words of :mod:`.keys`, so
every coordinate of the supported range is covered without x64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.hash import keys

EMPTY = -1


def build(coords, num_valid, capacity: int):
  """``int32[capacity]`` slots of the ordered linear-probing table of rows ``[0, num_valid)`` with in-range
  coordinates, inserted one at a time in row order: at an occupied slot the larger row stays and the smaller one
  moves on (rows with equal keys are all stored; the API flags them)."""
  ok, hi, lo = keys.pack_rows(coords)

  def insert(r, slots):
    def cond(state):
      return state[3]

    def body(state):
      slots, h, carried, _ = state
      s = slots[h]
      slots = slots.at[h].set(jnp.maximum(s, carried))
      return slots, (h + 1) & (capacity - 1), jnp.where(s == EMPTY, carried, jnp.minimum(s, carried)), s != EMPTY

    live = (r < num_valid) & ok[r]
    return jax.lax.while_loop(cond, body, (slots, keys.home(hi[r], lo[r], capacity), r, live))[0]

  return jax.lax.fori_loop(0, coords.shape[0], insert, jnp.full((capacity,), EMPTY, jnp.int32))


def query(slots, key_hi, key_lo, coords):
  """``int32[M]``: the row stored under each query's key, or -1 (absent, padding or out of range).

  ``slots``: int32 or float32 [capacity] (the kernel's table without its scratch slot).
  """
  slots = slots.astype(jnp.int32)
  capacity = slots.shape[0]
  ok, hi, lo = keys.pack_rows(coords)

  def one(h_lo_ok):
    hi1, lo1, ok1 = h_lo_ok

    def cond(state):
      return state[2]

    def body(state):
      h, found, _ = state
      s = slots[h]
      match = (s != EMPTY) & (key_hi[jnp.maximum(s, 0)] == hi1) & (key_lo[jnp.maximum(s, 0)] == lo1)
      return (h + 1) & (capacity - 1), jnp.where(match, s, found), (s != EMPTY) & ~match

    return jax.lax.while_loop(cond, body, (keys.home(hi1, lo1, capacity), jnp.int32(-1), ok1))[1]

  return jax.lax.map(one, (hi, lo, ok))
