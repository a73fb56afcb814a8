"""Wall-clock timing shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, which puts this
folder on the import path)."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path


def times_ms(fn, *args, warmup: int, reps: int) -> list[float]:
  """Milliseconds of ``reps`` calls of ``fn(*args)`` after ``warmup`` untimed ones, each waited for."""
  import jax  # noqa: PLC0415 - here, so that a peer's process measuring its memory (peak_rss_mb) never loads jax
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.perf_counter() - t0))
  return times


def peak_rss_mb() -> float:
  """This process's peak resident memory. (Not getrusage's ru_maxrss on Linux: it carries over the parent's peak
  through fork and exec, so a child would report its parent's.)"""
  status = Path("/proc/self/status")
  for line in status.read_text().splitlines() if status.exists() else ():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 1024)
