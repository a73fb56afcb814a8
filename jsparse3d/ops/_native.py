"""The native CPU kernels (``_cpu_kernels.cc``, ``_cpu_maps.cc``, ``_cpu_norm.cc``, ``_cpu_adam.cc``): built on
first use, cached, and registered with XLA's FFI.

XLA:CPU runs the pure-jnp convolution loop on one core, and at 16 channels that loop is bound by per-block
dispatch rather than arithmetic. The two kernels in ``_cpu_kernels.cc`` compute the same sums with vector
registers on all of XLA's intra-op threads, in an order fixed by the kernel map (so results do not depend on
the thread count). ``_cpu_maps.cc`` builds the kernel maps themselves, equal to the XLA path's, in one pass
over a hash table instead of hundreds of HLO ops that take seconds to compile. ``_cpu_norm.cc`` is the masked
batch norm (and ReLU) of every sparse model, forward and backward, in two passes each; ``_cpu_adam.cc`` the Adam
update of every parameter array in one call (:func:`jsparse3d.training.fused_adam`). Nothing is compiled at install
time: the first convolution on a CPU compiles the files with the system C++ compiler against the FFI headers that
ship with jaxlib (announced on stderr, once), into a per-user cache keyed by the sources, the headers, the compiler
and this CPU's instruction set. Without a compiler the XLA path is used (with one warning).

Environment:
  JSPARSE3D_NATIVE=0         never build or use the native kernels.
  JSPARSE3D_CACHE_DIR=path   where built libraries go (default ``$XDG_CACHE_HOME/jsparse3d`` or ``~/.cache``).
  CXX=compiler               the C++ compiler command (default ``c++``; ``ccache g++`` works).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import jax

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("_cpu_kernels.cc", "_cpu_maps.cc", "_cpu_norm.cc", "_cpu_adam.cc"))
HEADERS = tuple(Path(__file__).with_name(name) for name in ("_cpu_parallel.h", "_cpu_vectors.h"))
# XLA custom-call target names carry a version: a change to a handler's operands, attributes or results gets a
# new version (and the old name stays registered while it is supported), so exported programs keep working.
TARGET_VERSION = 1


def target(name: str) -> str:
  """The versioned custom-call target name of kernel ``name`` (``conv``, ``wgrad``, ``compact``, ...)."""
  return f"jsparse3d_{name}_v{TARGET_VERSION}"


TARGETS = {target("conv"): "JsparseConv", target("conv_wt"): "JsparseConvWt", target("wgrad"): "JsparseWgrad",
           target("compact"): "JsparseCompact",
           target("query_map"): "JsparseQueryMap", target("downsample"): "JsparseDownsample",
           target("query_rows"): "JsparseQueryRows",
           target("norm"): "JsparseNorm", target("norm_vjp"): "JsparseNormVjp",
           target("adam"): "JsparseAdam"}


def _cpu_signature() -> str:
  """What the compiled code may assume about this CPU (``-march=native`` is only reused where it matches)."""
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(("flags", "Features")):
        return line
  except OSError:
    pass
  return platform.machine() + platform.processor()


def _compile_flags() -> list[str]:
  arch = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
  return ["-O3", "-std=c++17", "-ffp-contract=off", "-fPIC", *arch, f"-I{jax.ffi.include_dir()}"]


def _compile(compiler: list[str], out: Path) -> None:
  """Compiles each source into an object file at once (one process each), then links them into ``out``.

  Raises:
    RuntimeError: a command failed (the message holds the compiler's output).
  """
  objects = [out.with_name(f"{out.stem}-{source.stem}.o") for source in SOURCES]
  flags = _compile_flags()
  try:
    procs = [subprocess.Popen([*compiler, *flags, "-c", str(source), "-o", str(obj)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for source, obj in zip(SOURCES, objects)]
    outputs = [proc.communicate()[0] for proc in procs]
    for source, proc, output in zip(SOURCES, procs, outputs):
      if proc.returncode != 0:
        raise RuntimeError(f"compiling {source.name} with {' '.join(compiler)!r} failed:\n{output[-4000:]}")
    link = subprocess.run([*compiler, "-shared", *map(str, objects), "-o", str(out)], capture_output=True, text=True)
    if link.returncode != 0:
      raise RuntimeError(f"linking the native kernels with {' '.join(compiler)!r} failed:\n"
                         f"{(link.stderr or link.stdout)[-4000:]}")
  finally:
    for obj in objects:
      if obj.exists():
        obj.unlink()


def cache_dir() -> Path:
  """Where jsparse3d keeps what it builds: ``$JSPARSE3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/jsparse3d`` or
  ``~/.cache/jsparse3d``; where that cannot be created or written (a read-only home), a per-user folder in the
  system's temporary directory."""
  if "JSPARSE3D_CACHE_DIR" in os.environ:
    return Path(os.environ["JSPARSE3D_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  path = Path(base) / "jsparse3d"
  try:
    path.mkdir(parents=True, exist_ok=True)
    if os.access(path, os.W_OK):
      return path
  except OSError:
    pass
  return Path(tempfile.gettempdir()) / f"jsparse3d-{getattr(os, 'getuid', lambda: 'user')()}"


@contextlib.contextmanager
def _exclusive(lock: Path):
  """Holds an exclusive lock on ``lock`` (POSIX): processes starting together compile one at a time, and the
  later ones find the library built."""
  try:
    import fcntl
  except ImportError:  # Windows: concurrent builds still rename complete files into place
    yield
    return
  with open(lock, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def build() -> Path:
  """Compiles the kernels (or finds them in the cache) and returns the shared library's path.

  The compile runs once per source, headers, compiler and CPU: concurrent processes wait for the one compiling,
  and a failed compile is remembered (no retry in every process) until the inputs change or its ``.failed`` file
  is deleted.

  Raises:
    RuntimeError: no compiler, or the compile failed (the message holds the compiler's output and the fix).
  """
  compiler = shlex.split(os.environ.get("CXX", "c++"))  # "ccache g++" works
  if not compiler or shutil.which(compiler[0]) is None:
    raise RuntimeError(f"no C++ compiler {' '.join(compiler)!r} on PATH (install g++ or clang, or set CXX)")
  version = subprocess.run([*compiler, "--version"], capture_output=True, text=True).stdout
  headers = Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api"
  digest = hashlib.sha256()
  for part in (*(s.read_bytes() for s in SOURCES + HEADERS), *(p.read_bytes() for p in sorted(headers.glob("*.h"))),
               version.encode(), _cpu_signature().encode(), " ".join(compiler + _compile_flags()).encode()):
    digest.update(part)
  cache = cache_dir()
  lib = cache / f"cpu_kernels-{digest.hexdigest()[:20]}.so"
  failed = lib.with_suffix(".failed")
  if lib.exists():
    return lib
  cache.mkdir(parents=True, exist_ok=True)
  with _exclusive(cache / "build.lock"):
    if lib.exists():  # another process built it while this one waited
      return lib
    if failed.exists():
      raise RuntimeError(f"{failed.read_text()}\n(remembered from an earlier attempt: fix the compiler, e.g. "
                         f"CXX=g++, then delete {failed}; JSPARSE3D_CACHE_DIR moves the cache)")
    print(f"jsparse3d: compiling the native CPU kernels once into {cache} (about 10 s)...", file=sys.stderr,
          flush=True)
    # Compile to a private name, then rename: no process ever sees a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
      _compile(compiler, Path(tmp))
      os.replace(tmp, lib)
    except RuntimeError as e:
      failed.write_text(str(e))
      raise
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
  return lib


@functools.cache
def _load() -> tuple[bool, str]:
  if os.environ.get("JSPARSE3D_NATIVE", "1") == "0":
    return False, "disabled by JSPARSE3D_NATIVE=0"
  try:
    lib = ctypes.cdll.LoadLibrary(str(build()))
  except (RuntimeError, OSError, AttributeError) as e:
    return False, str(e)
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return True, ""


def available() -> bool:
  """Whether the native CPU kernels are built and registered (building them on the first call)."""
  ok, why = _load()
  if not ok and why != "disabled by JSPARSE3D_NATIVE=0":
    _warn_once(why)
  return ok


def require() -> None:
  """Builds and registers the kernels, or raises a RuntimeError that says why and what to do."""
  ok, why = _load()
  if not ok:
    raise RuntimeError(
        f"the native CPU kernels are unavailable: {why}. Use implementation='xla' (pure XLA, always available), "
        "or install a C++17 compiler.")


@functools.cache
def _warn_once(why: str) -> None:
  warnings.warn(f"jsparse3d: native CPU kernels unavailable ({why.splitlines()[0]}); using the slower XLA path. "
                "Set JSPARSE3D_NATIVE=0 to silence this.", RuntimeWarning, stacklevel=3)
