"""Wall-clock timing shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, which puts this
folder on the import path)."""

from __future__ import annotations

import time

import jax


def times_ms(fn, *args, warmup: int, reps: int) -> list[float]:
  """Milliseconds of ``reps`` calls of ``fn(*args)`` after ``warmup`` untimed ones, each waited for."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.perf_counter() - t0))
  return times
