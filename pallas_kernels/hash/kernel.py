"""Pallas kernels of the GPU coordinate hash table (linear probing, ``capacity`` a power of two >= 2x rows).

Build: each program inserts a block of rows as an *ordered* linear-probing table. A lane applies an atomic max of
the row it carries to its current slot (empty slots hold -1): if the slot was empty, the row is placed and the
lane is done; if it held a larger row, the lane moves on with its row; if it held a smaller row, the lane's row
takes the slot and the lane moves on carrying the displaced one. Every row only moves forward along its own probe
sequence over slots that stay occupied, so lookups by linear probing find it, and no row is ever lost.

Why atomic max and not compare-and-swap: jax 0.10's Pallas Triton ``atomic_cas`` takes no index (only a whole
ref), so a per-lane compare-and-swap into a table cannot be written, and interpret mode runs only the add, max
and min atomics. Two lanes of one program never target the same slot in the same step (the lower lane goes
first), so interpret mode, which runs a vector of atomics as one gather and scatter, computes what the GPU does.
Inactive lanes target a scratch slot past the table with -1 (a no-op).

Slots are float32 holding row numbers exactly (rows < 2^24, checked by the API): jax 0.10's Triton lowering of
integer atomics handles scalars only, while float32 max works on vectors (as an integer max / unsigned min on the
bit pattern, which orders non-negative floats like their integers).

Query: each program probes a block of coordinates for every kernel offset: from the key's home slot until its key
(compared through the stored rows' keys) or an empty slot, producing an offset-major neighbour table.

Both loops stop after ``capacity`` steps at the latest and report lanes still running (status 2): the table is
never silently incomplete.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels import _config
from pallas_kernels.hash import keys

EMPTY = -1
MAX_ROWS = 1 << 24  # row numbers are exact in float32 slots below this
OUT_OF_RANGE, UNFINISHED = 1, 2  # status codes per row


def _any(mask, axis=None):
  """``jnp.any`` as a max (Triton lowers max reductions, not or-reductions)."""
  return jnp.max(mask.astype(jnp.int32), axis=axis) > 0


def _build_kernel(nv_ref, coords_ref, slots_in_ref, slots_ref, status_ref, *, bm: int, capacity: int):
  del slots_in_ref  # aliased with slots_ref
  start = pl.program_id(0) * bm
  rows = start + jnp.arange(bm, dtype=jnp.int32)
  ok, hi, lo = keys.pack(*(coords_ref[c, pl.ds(start, bm)] for c in range(4)))
  valid = rows < nv_ref[0]
  lane = jnp.arange(bm, dtype=jnp.int32)

  def cond(state):
    _, _, active, step = state
    return _any(active) & (step < capacity)

  def body(state):
    h, carried, active, step = state
    clash = (h[:, None] == h[None, :]) & active[None, :] & (lane[None, :] < lane[:, None])
    go = active & ~_any(clash, axis=1)
    val = jnp.where(go, carried, EMPTY).astype(jnp.float32)
    prev = pl_triton.atomic_max(slots_ref, (jnp.where(go, h, capacity),), val).astype(jnp.int32)
    moved = go & (prev != EMPTY)  # the slot was taken: carry on with the smaller of the two rows
    carried = jnp.where(moved, jnp.minimum(prev, carried), carried)
    h = jnp.where(moved, (h + 1) & (capacity - 1), h)
    return h, carried, active & ~(go & (prev == EMPTY)), step + 1

  init = (keys.home(hi, lo, capacity), rows, valid & ok, jnp.int32(0))
  _, _, active, _ = jax.lax.while_loop(cond, body, init)
  status_ref[pl.ds(start, bm)] = jnp.where(active, UNFINISHED, jnp.where(valid & ~ok, OUT_OF_RANGE, 0))


def build(coords_t, num_valid, *, capacity: int, bm: int, num_warps: int, num_stages: int, interpret: bool | None):
  """coords_t: int32 [4, N_p] (N_p a multiple of bm); num_valid: int32 [1].

  Returns ``(slots float32[capacity + 1], status int32[N_p])``; the last slot is the scratch slot.
  """
  n = coords_t.shape[1]
  kernel = functools.partial(_build_kernel, bm=bm, capacity=capacity)
  make = lambda interpret: pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((capacity + 1,), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32)),
      grid=(n // bm,),
      in_specs=[pl.no_block_spec] * 3,
      out_specs=(pl.no_block_spec, pl.no_block_spec),
      input_output_aliases={2: 0},
      compiler_params=_config.compiler_params(num_warps, num_stages),
      interpret=interpret,
      name="hash_build",
  )
  empty = jnp.full((capacity + 1,), EMPTY, jnp.float32)
  return _config.run(make, num_valid, coords_t, empty, interpret=interpret)


def probe(slots_ref, key_hi_ref, key_lo_ref, active, hi, lo, *, capacity: int, bm: int):
  """Linear probing for a vector of keys (lanes with ``active`` False are not looked up).

  Returns ``(found int32[bm], unfinished bool[bm])``: the row stored under each key or -1, and the lanes still
  probing when the ``capacity`` step limit ran out.
  """

  def cond(state):
    _, _, active, step = state
    return _any(active) & (step < capacity)

  def body(state):
    h, found, active, step = state
    s = slots_ref[h].astype(jnp.int32)
    r = jnp.maximum(s, 0)
    match = (s != EMPTY) & (key_hi_ref[r] == hi) & (key_lo_ref[r] == lo)
    found = jnp.where(active & match, s, found)
    return (h + 1) & (capacity - 1), found, active & (s != EMPTY) & ~match, step + 1

  init = (keys.home(hi, lo, capacity), jnp.full((bm,), -1, jnp.int32), active, jnp.int32(0))
  _, found, unfinished, _ = jax.lax.while_loop(cond, body, init)
  return found, unfinished


def _query_kernel(offsets_ref, coords_ref, slots_ref, key_hi_ref, key_lo_ref, out_ref, status_ref, *, bm: int,
                  capacity: int, num_offsets: int):
  start = pl.program_id(0) * bm
  b, x, y, z = (coords_ref[c, pl.ds(start, bm)] for c in range(4))
  base_ok = b >= 0

  def offset(k, unfinished):
    ok, hi, lo = keys.pack(b, x + offsets_ref[k, 0], y + offsets_ref[k, 1], z + offsets_ref[k, 2])
    found, active = probe(slots_ref, key_hi_ref, key_lo_ref, base_ok & ok, hi, lo, capacity=capacity, bm=bm)
    out_ref[k, pl.ds(start, bm)] = found
    return unfinished | active

  unfinished = jax.lax.fori_loop(0, num_offsets, offset, jnp.zeros((bm,), jnp.bool_))
  status_ref[pl.ds(start, bm)] = jnp.where(unfinished, UNFINISHED, 0)


def query(offsets, coords_t, slots, key_hi, key_lo, *, bm: int, num_warps: int, num_stages: int,
          interpret: bool | None):
  """offsets: int32 [K, 3]; coords_t: int32 [4, M_p]. Returns ``(table int32[K, M_p], status int32[M_p])``."""
  k, m = offsets.shape[0], coords_t.shape[1]
  kernel = functools.partial(_query_kernel, bm=bm, capacity=slots.shape[0] - 1, num_offsets=k)
  make = lambda interpret: pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((k, m), jnp.int32), jax.ShapeDtypeStruct((m,), jnp.int32)),
      grid=(m // bm,),
      in_specs=[pl.no_block_spec] * 5,
      out_specs=(pl.no_block_spec, pl.no_block_spec),
      compiler_params=_config.compiler_params(num_warps, num_stages),
      interpret=interpret,
      name="hash_query",
  )
  return _config.run(make, offsets, coords_t, slots, key_hi, key_lo, interpret=interpret)
