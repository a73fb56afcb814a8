"""The pinned coordinate semantics of jsparse3d, in one place.

Everything that decides *which* voxels interact lives here: the coordinate layout and its supported range,
the 64-bit key every hash table uses, the order and value of kernel offsets, and the output-coordinate rule of
strided convolution. `docs/conventions.md` is the contract; `tests/test_coords.py` checks this module
against it.

Layout: ``coords`` is ``int32[capacity, 4]`` with columns ``(batch, x, y, z)``; padded rows have batch ``-1``.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax.numpy as jnp
import numpy as np

# Supported range. Keys pack (batch, x, y, z) into 64 bits held as two uint32 words, so no jax x64 is needed:
# 10 bits of batch and 18 bits per spatial axis (offset so that negative coordinates are allowed).
BATCH_BITS = 10
AXIS_BITS = 18
MAX_BATCH = (1 << BATCH_BITS) - 1  # 1023
COORD_MIN = -(1 << (AXIS_BITS - 1))  # -131072
COORD_MAX = (1 << (AXIS_BITS - 1)) - 1  # 131071

MAX_KERNEL_SIZE = 7
MAX_STRIDE = 4
MAX_DILATION = 3

Triple = tuple[int, int, int]


def as_triple(value: int | Sequence[int], name: str) -> Triple:
  """Normalises an int or a length-3 sequence of ints to a tuple of three Python ints."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return (int(value),) * 3
  try:
    items = tuple(value)  # type: ignore[arg-type]
  except TypeError:
    raise TypeError(f"{name} must be an int or a sequence of 3 ints, got {value!r}.") from None
  if len(items) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
    raise TypeError(f"{name} must be an int or a sequence of 3 ints, got {value!r}.")
  return tuple(int(v) for v in items)  # type: ignore[return-value]


def check_conv_geometry(kernel_size: Triple, stride: Triple, dilation: Triple) -> None:
  """Raises ValueError for kernel/stride/dilation values outside what the contract defines."""
  for name, value, hi in (("kernel size", kernel_size, MAX_KERNEL_SIZE), ("stride", stride, MAX_STRIDE),
                          ("dilation", dilation, MAX_DILATION)):
    if any(v < 1 or v > hi for v in value):
      raise ValueError(
          f"{name} {value} is not supported: every axis must be in 1..{hi}. "
          f"Choose {name} values in that range (sparse convolution in jsparse3d covers kernel sizes 1..7, "
          f"strides 1..4 and dilations 1..3).")


def kernel_offsets(kernel_size: Triple, dilation: Triple, in_stride: Triple, padding: Triple | None = None
                   ) -> np.ndarray:
  """The offsets of a kernel, in weight order.

  Kernel index ``i`` along an axis of size ``k`` is offset ``(i - (k - 1) // 2) * dilation * in_stride``; with
  an explicit ``padding`` p (the dense-convolution rule) it is ``(i * dilation - p) * in_stride``, which is the
  same where ``p = (k - 1) // 2 * dilation``. Offsets are enumerated in C order over ``(ix, iy, iz)``, which is
  the order of ``weight.reshape(kx * ky * kz, C_in, C_out)``.

  Returns:
    ``int32[kx * ky * kz, 3]`` offsets in finest-voxel units.
  """
  if padding is None:
    padding = tuple((k - 1) // 2 * d for k, d in zip(kernel_size, dilation))
  axes = [(np.arange(k) * d - p) * s for k, d, p, s in zip(kernel_size, dilation, padding, in_stride)]
  return np.array(list(itertools.product(*axes)), dtype=np.int32).reshape(-1, 3)


def is_symmetric(kernel_size: Triple) -> bool:
  """True when offset ``K - 1 - o`` is the negation of offset ``o`` (every axis odd)."""
  return all(k % 2 == 1 for k in kernel_size)


def downsample(coords: jnp.ndarray, factor: Triple) -> jnp.ndarray:
  """The Minkowski output-coordinate rule: ``floor(c / factor) * factor`` per spatial axis, batch kept.

  Args:
    coords: ``int32[..., 4]`` coordinates ``(batch, x, y, z)``.
    factor: output stride in finest-voxel units (``s_in * s``).
  Returns:
    ``int32[..., 4]``; duplicates are not removed here.
  """
  f = jnp.asarray(factor, jnp.int32).reshape((1,) * (coords.ndim - 1) + (3,))
  xyz = jnp.floor_divide(coords[..., 1:], f) * f
  return jnp.concatenate([coords[..., :1], xyz], axis=-1)


def valid_rows(capacity: int, num_valid) -> jnp.ndarray:
  """``bool[..., capacity]``: rows ``[0, num_valid)`` are real, the rest padding (``num_valid`` may be batched)."""
  return jnp.arange(capacity, dtype=jnp.int32) < jnp.asarray(num_valid)[..., None]


def in_range(coords: jnp.ndarray) -> jnp.ndarray:
  """``bool[...]``: whether each ``(batch, x, y, z)`` row lies in the supported range (padding is not)."""
  b, xyz = coords[..., 0], coords[..., 1:]
  ok_b = (b >= 0) & (b <= MAX_BATCH)
  ok_xyz = jnp.all((xyz >= COORD_MIN) & (xyz <= COORD_MAX), axis=-1)
  return ok_b & ok_xyz


def pack_keys(coords: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Packs in-range ``(batch, x, y, z)`` rows into a 64-bit key held as ``(hi, lo)`` uint32 words.

  Bit layout, high to low: batch (10) | x + 2^17 (18) | y + 2^17 (18) | z + 2^17 (18). The map is injective on
  the supported range; callers mask out-of-range rows with :func:`in_range` first.
  """
  u = (coords[..., 1:] - COORD_MIN).astype(jnp.uint32)
  b = coords[..., 0].astype(jnp.uint32)
  ux, uy, uz = u[..., 0], u[..., 1], u[..., 2]
  hi = (b << 22) | (ux << 4) | (uy >> 14)
  lo = ((uy & jnp.uint32(0x3FFF)) << 18) | uz
  return hi, lo


def _fmix32(h: jnp.ndarray) -> jnp.ndarray:
  """MurmurHash3's 32-bit finaliser: a bijective mix with good avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def hash_keys(hi: jnp.ndarray, lo: jnp.ndarray) -> jnp.ndarray:
  """A 32-bit hash of a packed key (uint32)."""
  return _fmix32(lo ^ _fmix32(hi + jnp.uint32(0x9E3779B9)))
