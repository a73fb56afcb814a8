"""The one place that pins how the kernels are compiled: the Pallas backend (Triton), its launch parameters and
the supported jax range.

Every ``pallas_call`` in this package passes :func:`compiler_params`, which selects Triton (without it jax 0.10
lowers GPU kernels with Mosaic GPU) and gives warps and pipeline stages, and runs through :func:`run`, which
uses Pallas interpret mode where the call is lowered for the CPU (tests) and Triton where it is lowered for a
GPU. Nothing here queries a GPU at import time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas import triton as pl_triton

SUPPORTED_JAX = ((0, 10, 2), (0, 12, 0))  # [lowest, first unsupported): 0.10 here, 0.11 on the GPU image


def check_jax_version(version: str = jax.__version__) -> None:
  parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
  lo, hi = SUPPORTED_JAX
  if not lo <= parts < hi:
    raise RuntimeError(f"pallas_kernels supports jax >= {'.'.join(map(str, lo))} and < {'.'.join(map(str, hi))}, "
                       f"found {version}; install a jax in that range.")


def compiler_params(num_warps: int, num_stages: int) -> pl_triton.CompilerParams:
  """Triton launch parameters (their presence is what selects the Triton lowering)."""
  return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def run(make, *args, interpret: bool | None):
  """Runs ``make(interpret)(*args)``, where ``make`` builds a ``pallas_call``.

  ``interpret=None`` decides per lowering platform (``lax.platform_dependent``): interpret mode where the call is
  lowered for the CPU, Triton elsewhere. So a CPU-only host runs the kernels in interpret mode and can still lower
  the same function for CUDA (what the ahead-of-time compile does).
  """
  if interpret is not None:
    return make(bool(interpret))(*args)
  return jax.lax.platform_dependent(*args, cpu=make(True), default=make(False))


def round_up(n: int, multiple: int) -> int:
  """The smallest positive multiple of ``multiple`` >= ``n`` (a grid needs at least one block)."""
  return -(-max(int(n), 1) // multiple) * multiple


def pad(a, axis: int, size: int, value=0):
  """``a`` padded with ``value`` at the end of ``axis`` to ``size``."""
  if size == a.shape[axis]:
    return a
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, size - a.shape[axis])
  return jnp.pad(a, widths, constant_values=value)


def next_pow2(n: int, minimum: int = 1) -> int:
  return max(minimum, 1 << (max(int(n), 1) - 1).bit_length())


def check_block_sizes(block_sizes, tiles) -> None:
  """Validates a kernel family's ``BlockSizes``: the named ``tiles`` are powers of two >= 16 (Triton's smallest
  dot tile; tensors in a Triton program have power-of-two shapes), ``num_warps`` a power of two up to 16 and
  ``num_stages`` positive."""
  for name in tiles:
    v = getattr(block_sizes, name)
    if v < 16 or v & (v - 1):
      raise ValueError(f"BlockSizes.{name} must be a power of two >= 16, got {v}.")
  if block_sizes.num_warps not in (1, 2, 4, 8, 16):
    raise ValueError(f"BlockSizes.num_warps must be 1, 2, 4, 8 or 16, got {block_sizes.num_warps}.")
  if block_sizes.num_stages < 1:
    raise ValueError(f"BlockSizes.num_stages must be positive, got {block_sizes.num_stages}.")
