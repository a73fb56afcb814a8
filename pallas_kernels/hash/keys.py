"""The GPU hash table's keys: a ``(batch, x, y, z)`` coordinate packed into two uint32 words, and its home slot.

Bit layout, high to low: batch (10 bits) | x + 2^17 | y + 2^17 | z + 2^17 (18 bits each), so batch indices
0..1023 and coordinates -131072..131071 are covered without x64. Every function is elementwise on column
vectors (or scalars), the form the kernels read, so the kernels, the reference and the API share one definition.
"""

from __future__ import annotations

import jax.numpy as jnp

BATCH_BITS = 10
AXIS_BITS = 18
MAX_BATCH = (1 << BATCH_BITS) - 1
COORD_MIN = -(1 << (AXIS_BITS - 1))
COORD_MAX = (1 << (AXIS_BITS - 1)) - 1


def pack(b, x, y, z):
  """``(ok, hi, lo)``: whether each coordinate is in range, and its packed key (meaningful where ``ok``)."""
  ok = (b >= 0) & (b <= MAX_BATCH)
  for c in (x, y, z):
    ok = ok & (c >= COORD_MIN) & (c <= COORD_MAX)
  ub = b.astype(jnp.uint32)
  ux, uy, uz = ((c - COORD_MIN).astype(jnp.uint32) for c in (x, y, z))
  hi = (ub << 22) | (ux << 4) | (uy >> 14)
  lo = ((uy & jnp.uint32(0x3FFF)) << 18) | uz
  return ok, hi, lo


def pack_rows(coords):
  """:func:`pack` of an ``int32[..., 4]`` array of ``(batch, x, y, z)`` rows."""
  return pack(*(coords[..., c] for c in range(4)))


def _mix(h):
  """A bijective 32-bit mix with full avalanche (MurmurHash3's finaliser)."""
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def home(hi, lo, capacity: int):
  """``int32``: the first slot probed for a key in a table of ``capacity`` slots (a power of two)."""
  return (_mix(lo ^ _mix(hi + jnp.uint32(0x9E3779B9))) & jnp.uint32(capacity - 1)).astype(jnp.int32)
