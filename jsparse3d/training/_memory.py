"""The process's memory on Linux: freed memory back to the system, and huge pages for XLA's temporaries.

XLA's CPU compiler allocates a few hundred MB while it compiles a training step and frees it afterwards, but
glibc keeps freed memory in the arena of the thread that freed it. The compiled program then runs on XLA's worker
threads, which allocate from their own arenas, so a process holds both: the U-ResNet's training process peaked at
0.87 GB where 0.65 GB suffice. ``malloc_trim`` returns the free pages; on other C libraries this is a no-op.

Every execution of a compiled program allocates its temporaries afresh, and glibc maps blocks that large from
the system and unmaps them when they are freed, so each execution first-touches them page by page again: 630,000
page faults a MinkUNet training step (about 2.5 GB) on 4 KiB pages. glibc's ``glibc.malloc.hugetlb=1`` tunable
asks for transparent huge pages (2 MiB) on those mappings, which cuts the faults to a few thousand; it is read at
process start only, so :func:`restart_with_huge_pages` starts the process again with it set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@functools.cache
def _malloc_trim():
  name = ctypes.util.find_library("c")
  try:
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
  except OSError:
    return None


def release_freed_memory() -> bool:
  """Returns memory that the process has freed (chiefly the compiler's) to the operating system.

  Call it after compiling, before the compiled program first runs (the trainer does, once per new batch shape):
  it lowers the process's peak resident memory by the compiler's working set. glibc only (Linux); elsewhere it
  does nothing.

  Returns:
    True if any memory was returned.

  Example:
    >>> step = jax.jit(lambda v: (v * 2).sum())
    >>> compiled = step.lower(jnp.ones(8)).compile()
    >>> _ = jsparse3d.training.release_freed_memory()
    >>> float(compiled(jnp.ones(8)))
    16.0
  """
  trim = _malloc_trim()
  return bool(trim(0)) if trim is not None else False


def _huge_pages_env(environ, thp_mode: str | None) -> dict | None:
  """``environ`` with the huge-page tunable added, or None where a restart would change nothing: the tunable (or
  its opposite) is set already, or the kernel's mode is not ``[madvise]`` (huge pages only when asked for)."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables or thp_mode is None or "[madvise]" not in thp_mode:
    return None
  return dict(environ, GLIBC_TUNABLES=f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1")


def restart_with_huge_pages() -> None:
  """Starts this Python process again with glibc's transparent-huge-page tunable, where that would change anything.

  Call it first thing in a script's ``if __name__ == "__main__":`` block (``python -m train`` does): the process is
  replaced by the same command with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` added to its environment, and the
  script runs from the start. It returns, without restarting, only where that would change nothing: not glibc on
  Linux, the kernel's huge pages not in ``madvise`` mode (``always`` already gives them, ``never`` never does), or
  ``GLIBC_TUNABLES`` already mentioning the tunable (``glibc.malloc.hugetlb=0`` opts out).

  Measured here (docs/benchmarks.md): a MinkUNet cr 1.0 training step 5.9 s -> 4.3 s, page faults 629,000 -> 2,700
  a step, the same peak memory.

  Example (a script's entry point; not run as a doctest, since it would restart the test process)::

    if __name__ == "__main__":
      jsparse3d.training.restart_with_huge_pages()
      main()
  """
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return
  try:
    mode = _THP_MODE.read_text()
  except OSError:
    mode = None
  env = _huge_pages_env(os.environ, mode)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError:  # no restart: the process runs on, with 4 KiB pages
    pass
