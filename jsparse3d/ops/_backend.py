"""Which implementation runs an op: the one place where ``implementation=`` is checked and resolved.

Three implementations exist, and every op names the ones it has:

- ``"native"``: the C++ CPU kernels called through XLA's FFI (``_native.py``), float32 arithmetic, CPU only.
- ``"xla"``: plain XLA operations, on any backend and in any float dtype.
- ``"pallas"``: the GPU kernels of :mod:`pallas_kernels` (interpret mode on a CPU, for tests).

``None`` (every op's default) picks Pallas on a GPU backend, the native kernels on the CPU backend where they
build, and XLA otherwise or for float64. Every implementation of an op computes the same result.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp

from jsparse3d.ops import _native

IMPLEMENTATIONS = ("xla", "native", "pallas")

# op -> the implementations it has
SUPPORTED = {
    "conv": ("xla", "native", "pallas"),
    "kernel_map": ("xla", "native"),
    "index": ("xla", "pallas"),
    "voxel_to_point": ("xla", "native", "pallas"),
    "batch_norm": ("xla", "native"),
    "adam": ("xla", "native"),  # jsparse3d.training.fused_adam
}


def on_gpu() -> bool:
  """Whether the default backend is a GPU."""
  return jax.default_backend() in ("gpu", "cuda", "rocm")


def resolve(op: str, implementation: str | None, dtype=jnp.float32) -> str:
  """The implementation that runs ``op`` on arrays of ``dtype``; raises, naming the fix, for one it cannot.

  Example:
    >>> resolve("conv", None) in ("native", "xla")  # native where the CPU kernels build; "pallas" on a GPU
    True
  """
  supported = SUPPORTED[op]
  if implementation not in (None,) + supported:
    if implementation in IMPLEMENTATIONS:
      raise ValueError(f"{op} has no {implementation!r} implementation; use one of {supported} or None (the "
                       "default).")
    raise ValueError(f"{op}: implementation must be one of {supported} or None (the default), got "
                     f"{implementation!r}.")
  wide = jnp.dtype(dtype) == jnp.float64
  if implementation is None:
    if on_gpu() and not wide and "pallas" in supported:
      return "pallas"
    if jax.default_backend() == "cpu" and not wide and "native" in supported and _native.available():
      return "native"
    return "xla"
  if implementation == "native":
    if jax.default_backend() != "cpu":
      raise ValueError(f"implementation='native' runs on the CPU backend only (the default backend is "
                       f"{jax.default_backend()!r}). Use implementation='xla' or None.")
    if wide:
      raise ValueError(f"{op}: implementation='native' computes in float32; use implementation='xla' for float64.")
    _native.require()
  if implementation == "pallas" and wide:
    raise ValueError(f"{op}: implementation='pallas' takes float32, bfloat16 or float16; use "
                     "implementation='xla' for float64.")
  return implementation


_PALLAS_MODULES = ("conv", "devoxelize", "hash")


def pallas(kernels: str):
  """The ``api`` module of one family of :mod:`pallas_kernels` (``"conv"``, ``"devoxelize"`` or ``"hash"``): the
  one place jsparse3d reaches the GPU kernels, imported on first use (never with jsparse3d).

  Example:
    >>> pallas("hash").__name__
    'pallas_kernels.hash.api'
  """
  if kernels not in _PALLAS_MODULES:
    raise ValueError(f"pallas kernels {kernels!r}: expected one of {_PALLAS_MODULES}.")
  return importlib.import_module(f"pallas_kernels.{kernels}.api")
