"""Block sizes found by a short search on the GPU in use, kept in a JSON file keyed by the GPU and jax's version.

A kernel family asks :func:`lookup` for its tuned block sizes before it falls back to its defaults; only a GPU
backend ever finds an entry (a CPU host, including one lowering for CUDA ahead of time, uses the defaults).
:func:`search` times candidate block sizes and :func:`record` stores the fastest; ``python -m
pallas_kernels.gpu_check`` runs both. The file is plain JSON, read and merged on every write:

  {"NVIDIA H200 | jax 0.11.2": {"conv_forward float32 16x16": {"rows": 64, ...}, ...}}

Environment:
  JSPARSE3D_PALLAS_TUNING=path   the file (default ``pallas_tuning.json`` in ``$XDG_CACHE_HOME/pallas_kernels``,
                                 or ``~/.cache/pallas_kernels``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import numpy as np

ENV = "JSPARSE3D_PALLAS_TUNING"


def path() -> Path:
  """The tuning file: ``$JSPARSE3D_PALLAS_TUNING``, else ``pallas_tuning.json`` in ``$XDG_CACHE_HOME/pallas_kernels``
  (``~/.cache/pallas_kernels``)."""
  if ENV in os.environ:
    return Path(os.environ[ENV])
  return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pallas_kernels" / "pallas_tuning.json"


def device_key(device=None) -> str:
  """``"<device kind> | jax <version>"``: tuned sizes hold for one GPU model and one compiler."""
  device = device or jax.devices()[0]
  return f"{device.device_kind} | jax {jax.__version__}"


def entry_key(kernel: str, dtype, c_in: int, c_out: int) -> str:
  return f"{kernel} {np.dtype(dtype).name} {c_in}x{c_out}"


_loaded: dict[tuple[str, float], dict] = {}


def _read(file: Path) -> dict:
  try:
    stamp = file.stat().st_mtime
  except OSError:
    return {}
  if (str(file), stamp) not in _loaded:
    try:
      _loaded[(str(file), stamp)] = json.loads(file.read_text())
    except (OSError, ValueError) as e:
      raise ValueError(f"the Pallas tuning file {file} is not valid JSON ({e}); delete it or point "
                       f"{ENV} at another file.") from e
  return _loaded[(str(file), stamp)]


def lookup(kernel: str, dtype, c_in: int, c_out: int) -> dict | None:
  """The recorded block sizes (a dict of ``BlockSizes`` fields) of ``kernel`` at these channels and dtype on the
  default GPU, or None (no GPU backend, no file, or no entry)."""
  if jax.default_backend() not in ("gpu", "cuda", "rocm"):
    return None
  return _read(path()).get(device_key(), {}).get(entry_key(kernel, dtype, c_in, c_out))


def record(kernel: str, dtype, c_in: int, c_out: int, fields: dict, *, file: Path | None = None) -> Path:
  """Stores ``fields`` as the block sizes of ``kernel`` on the default GPU (merging with what the file holds)."""
  file = Path(file or path())
  data = dict(_read(file))
  data.setdefault(device_key(), {})[entry_key(kernel, dtype, c_in, c_out)] = dict(fields)
  file.parent.mkdir(parents=True, exist_ok=True)
  tmp = file.with_suffix(f".tmp{os.getpid()}")
  tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
  tmp.replace(file)
  return file


def median_seconds(fn, *, reps: int = 10, inner: int = 5) -> float:
  """Median over ``reps`` of the mean time of ``inner`` back-to-back calls of ``fn`` (which returns arrays);
  the first call (compilation) is not timed."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(inner):
      out = fn()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / inner)
  return float(np.median(times))


def search(candidates, run, *, check=None, reps: int = 10, inner: int = 5):
  """``(best, [(candidate, seconds or why not)])``: times ``run(candidate)`` (a zero-argument callable that
  returns arrays) for each candidate whose first result passes ``check`` (if given); a candidate that fails to
  compile, or computes a wrong result, is reported, never chosen."""
  results = []
  for c in candidates:
    try:
      fn = run(c)
      if check is not None and not check(jax.block_until_ready(fn())):
        results.append((c, "rejected: wrong result"))
        continue
      results.append((c, median_seconds(fn, reps=reps, inner=inner)))
    except Exception as e:  # noqa: BLE001 - a block size Triton rejects is a result of the search
      results.append((c, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
  timed = [(c, t) for c, t in results if isinstance(t, float)]
  best = min(timed, key=lambda ct: ct[1])[0] if timed else None
  return best, results
