"""Calorimeter hit tables on disk, in the columns of the MIT calo-cluster code: ``x, y, z, time, energy, semantic``
and optionally ``instance`` (one row per hit).

Two layouts:

- a folder of ``.npz`` files, one event each (in file-name order), each holding the columns as 1D arrays;
- one HDF5 file (``.h5`` / ``.hdf5``) holding each column for all events end to end, plus ``event_offsets``
  int64[E + 1] (event ``i`` is rows ``offsets[i]:offsets[i + 1]``).

calo-cluster stores events as pandas pickles. Pickles can run code when loaded, so this reader never opens them;
convert your own files once, where you trust them::

  python -c "import sys, numpy as np, pandas as pd; d = pd.read_pickle(sys.argv[1]); np.savez(sys.argv[2], \\
    **{c: d[c].to_numpy() for c in ('x', 'y', 'z', 'time', 'energy')}, semantic=d['semantic_id'].to_numpy(), \\
    instance=d['instance_id'].to_numpy())" event.pkl event.npz

(calo-cluster's HCAL tables name the columns ``hit_x``... in some versions: map them the same way.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jsparse3d.data._larcv3 import _h5py

COLUMNS = ("x", "y", "z", "time", "energy", "semantic")
OPTIONAL = ("instance",)
_HDF5 = (".h5", ".hdf5")


class CaloEvents:
  """Random access to calorimeter events stored as described in this module; HDF5 files open lazily (and again
  in a forked worker).

  ``ds[i]`` returns a dict with ``points`` float32[N, 5] (x, y, z, energy, time: the feature order of the
  generators), ``labels`` int32[N] (the ``semantic`` column) and, when the files have them, ``instances``
  int32[N] (-1: no particle).

  Args:
    path: a folder of ``.npz`` files or an ``.h5`` / ``.hdf5`` file.

  Example:
    >>> from jsparse3d import data
    >>> path = data.write_calo_events("calo.h5", [data.synthetic_hcal_event(s) for s in range(3)])
    >>> ds = data.CaloEvents(path)
    >>> len(ds), ds[0]["points"].shape[1]
    (3, 5)
  """

  def __init__(self, path):
    self.path = Path(path)
    if not self.path.exists():
      raise FileNotFoundError(f"calorimeter data {self.path} does not exist; pass a folder of .npz events or an "
                              ".h5 file (write_calo_events writes either).")
    self._file, self._pid = None, None
    if self.path.is_dir():
      self._files = sorted(self.path.glob("*.npz"))
      if not self._files:
        pickles = sorted(self.path.glob("*.pkl"))
        hint = (f" It holds {len(pickles)} .pkl files: pickles can run code when loaded and are never read here; "
                "convert them once with the one-line command in jsparse3d.data._calo_files' documentation (or "
                "docs/guide.md).") if pickles else ""
        raise ValueError(f"{self.path} holds no .npz event files.{hint}")
      self._len = len(self._files)
      with np.load(self._files[0], allow_pickle=False) as first:
        self.has_instances = "instance" in first.files
    elif self.path.suffix in _HDF5:
      f = self._open()
      missing = [c for c in (*COLUMNS, "event_offsets") if c not in f]
      if missing:
        raise ValueError(f"{self.path} lacks the datasets {missing}; a calorimeter file holds the columns "
                         f"{list(COLUMNS)} (+ instance) end to end and event_offsets [events + 1].")
      offsets = np.asarray(f["event_offsets"][:])
      lengths = {c: len(f[c]) for c in COLUMNS + OPTIONAL if c in f}
      if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{self.path}: event_offsets must rise from 0 ({offsets[:5]}...); the file is corrupt.")
      if len(set(lengths.values())) != 1 or offsets[-1] != next(iter(lengths.values())):
        raise ValueError(f"{self.path}: the columns hold {lengths} rows and event_offsets ends at {offsets[-1]}; "
                         "the file is truncated or was written incompletely.")
      self._offsets, self._len = offsets, len(offsets) - 1
      self.has_instances = "instance" in f
    else:
      raise ValueError(f"{self.path} is neither a folder of .npz files nor an .h5 / .hdf5 file.")

  def _open(self):
    if self._file is None or self._pid != os.getpid():
      self._file = _h5py().File(self.path, "r")
      self._pid = os.getpid()
    return self._file

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_file"} | {"_file": None}

  def __len__(self) -> int:
    return self._len

  def _columns(self, i):
    if hasattr(self, "_files"):
      where = self._files[i]
      with np.load(where, allow_pickle=False) as z:
        missing = [c for c in COLUMNS if c not in z.files]
        if missing:
          raise ValueError(f"{where} lacks the columns {missing}; an event file holds {list(COLUMNS)} "
                           "(+ instance).")
        return where, {c: np.asarray(z[c]) for c in COLUMNS + OPTIONAL if c in z.files}
    f, (lo, hi) = self._open(), self._offsets[i:i + 2]
    return f"{self.path} event {i}", {c: np.asarray(f[c][lo:hi]) for c in COLUMNS + OPTIONAL if c in f}

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self._len:
      raise IndexError(f"event {i} out of range for {self._len} events in {self.path}.")
    where, cols = self._columns(int(i))
    lengths = {c: v.shape for c, v in cols.items()}
    if any(len(s) != 1 for s in lengths.values()) or len({s[0] for s in lengths.values()}) != 1:
      raise ValueError(f"{where}: every column must be 1D with one row per hit, got shapes {lengths}.")
    points = np.stack([cols[c] for c in ("x", "y", "z", "energy", "time")], axis=1).astype(np.float32)
    if not np.isfinite(points).all():
      raise ValueError(f"{where}: x, y, z, energy or time hold NaN or infinite values; drop those hits first.")
    for c in ("semantic", "instance"):
      if c in cols and not np.issubdtype(cols[c].dtype, np.integer):
        raise ValueError(f"{where}: column {c!r} must hold integers, got {cols[c].dtype}.")
    event = {"points": points, "labels": cols["semantic"].astype(np.int32)}
    if "instance" in cols:
      event["instances"] = cols["instance"].astype(np.int32)
    return event


def write_calo_events(path, events) -> Path:
  """Writes events (dicts with ``points`` [N, 5] as x, y, z, energy, time, ``labels`` and optionally
  ``instances``, as the generators make them) in the layout :class:`CaloEvents` reads: an HDF5 file when
  ``path`` ends in ``.h5`` / ``.hdf5``, else a folder of ``event_00000.npz``... Returns the path."""
  path = Path(path)
  tables = []
  for i, ev in enumerate(events):
    pts = np.asarray(ev["points"])
    if pts.ndim != 2 or pts.shape[1] < 5:
      raise ValueError(f"event {i}: points must be [N, 5] (x, y, z, energy, time), got {pts.shape}.")
    cols = {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "energy": pts[:, 3], "time": pts[:, 4],
            "semantic": np.asarray(ev["labels"], np.int32)}
    if "instances" in ev:
      cols["instance"] = np.asarray(ev["instances"], np.int32)
    tables.append(cols)
  if not tables:
    raise ValueError("no events to write.")
  if path.suffix in _HDF5:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _h5py().File(path, "w") as f:
      for c in tables[0]:
        f.create_dataset(c, data=np.concatenate([t[c] for t in tables]))
      f.create_dataset("event_offsets", data=np.cumsum([0] + [len(t["x"]) for t in tables]).astype(np.int64))
  else:
    path.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tables):
      np.savez(path / f"event_{i:05d}.npz", **t)
  return path
