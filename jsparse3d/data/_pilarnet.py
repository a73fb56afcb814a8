"""PILArNet-M: the open LArTPC dataset of the PoLAr-MAE and Panda papers (DeepLearnPhysics), about 1.2 million
simulated events in a 768^3 volume of 3 mm voxels, as HDF5 files ``{train,val,test}/generic_v2_<n>_v*.h5``.

Layout, as the dataset's public readers (PoLAr-MAE's and pimm's ``PILArNetH5Dataset``) index it; each dataset
holds one variable-length 1D array per event:

- ``point[i]`` reshapes to ``(N, 8)``: x, y, z (voxel units), deposited energy (MeV), then four more columns
  that those readers never use (time, electrons and dx are said to be among them; not verified here, so they are
  kept as ``point_extra`` without names).
- ``cluster[i]`` reshapes to ``(M, 5)`` in v1: points, fragment id, group (particle) id, interaction id, motif
  class; and to ``(M, 6)`` in v2, a particle-id class appended (-1: none). The points are stored cluster after
  cluster, in table order, so a cluster's points are the next ``points`` rows. Cluster 0 holds the low-energy
  scatters.
- v2 adds ``cluster_extra[i]``, reshaping to ``(M, 5)``: an unnamed first column, then the momentum and the vertex
  x, y, z (v3 files append an is-primary flag; their sixth column is ignored here).

Label sets: motif (0 shower, 1 track, 2 Michel, 3 delta ray, 4 low-energy scatter, the ``larcv5`` scheme) and, in
v2, particle id (0 photon, 1 electron, 2 muon, 3 pion, 4 proton, 5 none: the readers map -1 to 5).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jsparse3d.data._larcv3 import _h5py

MOTIF_NAMES = ("shower", "track", "Michel", "delta", "low-energy scatter")
PID_NAMES = ("photon", "electron", "muon", "pion", "proton", "none")
_CLUSTER_COLUMNS = {1: 5, 2: 6}


class _LazyFiles:
  """A reader of one ``.h5`` file or a folder of them, whose handles open on first use, per process (a forked
  loader worker opens its own); events are indexed as ``(file, entry)`` in ``_index``."""

  def __init__(self, path, what: str, example: str = ""):
    path = Path(path)
    if not path.exists():
      raise FileNotFoundError(f"{what} {path} does not exist; pass an .h5 file or a folder of them{example}.")
    self.files = sorted(path.glob("*.h5")) if path.is_dir() else [path]
    if not self.files:
      raise ValueError(f"{path} holds no .h5 files.")
    self._handles, self._pid, self._index, self.skipped = {}, None, [], 0

  def _index_events(self, f, dataset, columns: int, min_points: int):
    """Adds the entries of ``dataset`` (one flat variable-length entry per event, ``columns`` values per point) to
    the index, skipping (and counting in ``skipped``) events with fewer than ``min_points`` points."""
    if min_points > 0:
      keep = np.flatnonzero(np.array([len(dataset[i]) // columns for i in range(len(dataset))]) >= min_points)
    else:
      keep = np.arange(len(dataset))
    self.skipped += len(dataset) - len(keep)
    self._index.extend((f, int(i)) for i in keep)

  def _open(self, f):
    if self._pid != os.getpid():
      self._handles, self._pid = {}, os.getpid()
    if f not in self._handles:
      self._handles[f] = _h5py().File(f, "r")
    return self._handles[f]

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_handles"} | {"_handles": {}, "_pid": None}


class PILArNetM(_LazyFiles):
  """Random access to PILArNet-M events, opened lazily (and again in a forked worker).

  ``ds[i]`` is a voxel event for the sparse networks: ``coords`` int32[V, 3] (each point's voxel, ``floor`` of x, y,
  z), ``energy`` float32[V] (MeV), ``log_energy`` (the papers' feature, :func:`log_energy`), ``labels`` int32[V]
  (``labels``' set), ``motif`` and (v2) ``pid``, ``cluster`` int32[V] (the group id: one particle), ``interaction``
  int32[V] and (v2) ``momentum``, ``vertex`` float32[V, 3] from each voxel's cluster. Points that share a voxel (a
  few where particles cross) are merged, as a detector would read them: energies summed, labels and ids of the
  largest deposit. ``ds.points(i)`` gives the unmerged points with every column.

  Args:
    path: one ``.h5`` file or a folder of them (sorted by name).
    labels: ``"motif"`` or ``"pid"`` (v2 only).
    energy_threshold: drop points at or below it (MeV); the papers use 0.13. min_points: skip events with
      fewer points before the threshold (the papers: 1024); the skipped count is ``ds.skipped``.
    remove_low_energy_scatters: drop cluster 0.
    version: 1 or 2; default detected from the files' cluster tables.

  Example:
    >>> path = write_pilarnet("tiny.h5", [synthetic_pilarnet_event(s) for s in range(2)])
    >>> ds = PILArNetM(path)
    >>> ds.version, len(ds), ds[0]["coords"].shape[1]
    (2, 2, 3)
  """

  def __init__(self, path, *, labels: str = "motif", energy_threshold: float = 0.0, min_points: int = 0,
               remove_low_energy_scatters: bool = False, version: int | None = None):
    super().__init__(path, "PILArNet-M data", " (e.g. .../pilarnet-m/train)")
    if labels not in ("motif", "pid"):
      raise ValueError(f"labels must be 'motif' or 'pid', got {labels!r}.")
    self.labels, self.energy_threshold = labels, float(energy_threshold)
    self.remove_low_energy_scatters = remove_low_energy_scatters
    versions = {self._detect(f) for f in self.files}
    if version is None:
      if len(versions) != 1:
        raise ValueError(f"{path}: the files mix PILArNet-M versions {sorted(versions)}; read them apart.")
      version = versions.pop()
    elif version not in _CLUSTER_COLUMNS:
      raise ValueError(f"version must be 1 or 2, got {version!r}.")
    elif versions != {version}:
      raise ValueError(f"{path}: asked for version {version} but the files are version {sorted(versions)}.")
    self.version = version
    if labels == "pid" and version == 1:
      raise ValueError("particle-id labels exist in PILArNet-M v2 only; this data is v1 (use labels='motif').")
    for f in self.files:
      self._index_events(f, self._open(f)["point"], 8, min_points)

  @property
  def class_names(self) -> tuple[str, ...]:
    """The names of ``labels``' classes, in label order."""
    return PID_NAMES if self.labels == "pid" else MOTIF_NAMES

  def _detect(self, f) -> int:
    h = self._open(f)
    missing = [name for name in ("point", "cluster") if name not in h]
    if missing:
      raise ValueError(f"{f} has no {missing} dataset: is it a PILArNet-M file? (It holds {sorted(h)}.)")
    if len(h["point"]) != len(h["cluster"]):
      raise ValueError(f"{f}: {len(h['point'])} point entries but {len(h['cluster'])} cluster entries; the file is "
                       "truncated or inconsistent.")
    if len(h["cluster"]) == 0:
      raise ValueError(f"{f} holds no events.")
    return 2 if "cluster_extra" in h else 1  # v2 files carry the per-cluster extras

  def __len__(self) -> int:
    return len(self._index)

  def points(self, i: int) -> dict:
    """Event ``i``'s points, unmerged, every column: ``xyz`` float32[N, 3], ``energy``, ``point_extra``
    float32[N, 4] (the unnamed columns), and per point ``motif``, ``pid`` (v2; -1 mapped to 5), ``cluster``
    (group id), ``fragment``, ``interaction``, ``momentum`` and ``vertex`` (v2), after the threshold and the
    low-energy-scatter option."""
    if not 0 <= i < len(self._index):
      raise IndexError(f"event {i} out of range for {len(self._index)} events.")
    f, row = self._index[i]
    h = self._open(f)
    where = f"{f} event {row}"
    point, cluster = np.asarray(h["point"][row]), np.asarray(h["cluster"][row])
    if point.size % 8:
      raise ValueError(f"{where}: point holds {point.size} values, not a multiple of 8 columns.")
    columns = _CLUSTER_COLUMNS[self.version]
    if cluster.size % columns:
      raise ValueError(f"{where}: cluster holds {cluster.size} values, not a multiple of the {columns} columns of "
                       f"version {self.version}.")
    point, cluster = point.reshape(-1, 8), cluster.reshape(-1, columns)
    sizes = cluster[:, 0].astype(np.int64)
    if np.any(sizes < 0) or sizes.sum() != len(point):
      raise ValueError(f"{where}: the cluster table counts {int(sizes.sum())} points but the event holds "
                       f"{len(point)}; the file is inconsistent.")
    per_point = lambda col: np.repeat(cluster[:, col], sizes).astype(np.int32)
    out = {"xyz": point[:, :3].astype(np.float32), "energy": point[:, 3].astype(np.float32),
           "point_extra": point[:, 4:].astype(np.float32), "fragment": per_point(1), "cluster": per_point(2),
           "interaction": per_point(3), "motif": per_point(4)}
    first = np.zeros(len(point), bool)
    first[:sizes[0] if len(sizes) else 0] = True
    if self.version == 2:
      out["pid"] = np.where(per_point(5) < 0, 5, per_point(5))
      extra = np.asarray(h["cluster_extra"][row]) if "cluster_extra" in h else np.zeros(len(cluster) * 5)
      if extra.size != len(cluster) * 5 and extra.size != len(cluster) * 6:
        raise ValueError(f"{where}: cluster_extra holds {extra.size} values for {len(cluster)} clusters (5 or 6 "
                         "columns each); the file is inconsistent.")
      extra = extra.reshape(len(cluster), -1)
      out["momentum"] = np.repeat(extra[:, 1], sizes).astype(np.float32)
      out["vertex"] = np.repeat(extra[:, 2:5], sizes, axis=0).astype(np.float32)
    keep = out["energy"] > self.energy_threshold if self.energy_threshold > 0 else np.ones(len(point), bool)
    if self.remove_low_energy_scatters:
      keep &= ~first
    return {k: v[keep] for k, v in out.items()}

  def __getitem__(self, i: int) -> dict:
    p = self.points(i)
    event = _merge_voxels(p["xyz"], p["energy"], {k: p[k] for k in _PER_VOXEL if k in p}, where=f"event {i}")
    event["labels"] = event[self.labels].astype(np.int32)
    return event


_PER_VOXEL = ("motif", "pid", "cluster", "interaction", "fragment", "momentum", "vertex")


def _merge_voxels(xyz, energy, per_point: dict, *, where: str) -> dict:
  """Points -> voxels: ``coords`` int32[V, 3] (``floor`` of ``xyz``), energies summed, every ``per_point`` array
  taken from the voxel's largest deposit; ``log_energy`` of the sums. Raises for coordinates outside
  ``[0, 4096)``."""
  coords = np.floor(xyz).astype(np.int64)
  if len(coords) and (coords.min() < 0 or coords.max() >= 4096):
    raise ValueError(f"{where}: voxel coordinates outside [0, 4096); PILArNet-M points lie in [0, 768).")
  key = (coords[:, 0] * 4096 + coords[:, 1]) * 4096 + coords[:, 2]
  order = np.lexsort((-energy, key))  # by voxel, the largest deposit first
  first = np.r_[True, key[order][1:] != key[order][:-1]] if len(key) else np.zeros(0, bool)
  rep = order[first]  # the point that stands for its voxel
  summed = np.zeros(len(rep))
  np.add.at(summed, np.cumsum(first) - 1, np.asarray(energy, np.float64)[order])
  event = {"coords": coords[rep].astype(np.int32), "energy": summed.astype(np.float32),
           "log_energy": log_energy(summed)}
  event.update({k: np.asarray(v)[rep] for k, v in per_point.items()})
  return event


class MichelChallenge(_LazyFiles):
  """Random access to the INSS2025 Michel-electron challenge files, the smallest real LArTPC layout a student
  meets: per event ``xyze`` float32[N, 4] (voxel indices in PILArNet-M's 768^3 grid, then the energy) and
  ``label`` int32[N].

  Each ``.h5`` file holds the two datasets either as one variable-length entry per event (flattened, as
  PILArNet-M stores its tables) or as plain 2D/1D arrays (one event per file). How the challenge's files store
  them was not verified against its writers; any other layout raises an error that names what the file holds.

  ``ds[i]`` is a voxel event like :class:`PILArNetM`'s: ``coords`` int32[V, 3], ``energy``, ``log_energy`` and
  ``labels`` int32[V] (points sharing a voxel merged: energies summed, the largest deposit's label).

  Args:
    path: one ``.h5`` file or a folder of them (sorted by name).
    class_names: one name per label value (default: PILArNet-M's five motif classes); a label outside them
      raises when its event is read.
    energy_threshold: drop points at or below it (MeV). min_points: skip events with fewer points (the skipped
      count is ``ds.skipped``).

  Example:
    >>> path = write_michel_challenge("michel.h5", [synthetic_michel_event(s) for s in range(3)])
    >>> ds = MichelChallenge(path)
    >>> len(ds), ds[0]["coords"].shape[1], ds.class_names[2]
    (3, 3, 'Michel')
  """

  def __init__(self, path, *, class_names=MOTIF_NAMES, energy_threshold: float = 0.0, min_points: int = 0):
    super().__init__(path, "Michel-challenge data")
    self.class_names, self.energy_threshold = tuple(class_names), float(energy_threshold)
    for f in self.files:
      h = self._open(f)
      missing = [name for name in ("xyze", "label") if name not in h]
      if missing:
        raise ValueError(f"{f} has no {missing} dataset: is it a Michel-challenge file? (It holds {sorted(h)}.)")
      xyze, label = h["xyze"], h["label"]
      if xyze.dtype.kind == "O":  # one variable-length entry per event
        if label.dtype.kind != "O" or len(label) != len(xyze):
          raise ValueError(f"{f}: xyze holds {len(xyze)} variable-length events but label is {label.shape} "
                           f"{label.dtype}; the file is truncated or inconsistent.")
        self._index_events(f, xyze, 4, min_points)
      elif xyze.ndim == 2 and xyze.shape[1] == 4 and label.shape == (xyze.shape[0],):
        if xyze.shape[0] >= min_points:
          self._index.append((f, None))
        else:
          self.skipped += 1
      else:
        raise ValueError(f"{f}: xyze is {xyze.shape} {xyze.dtype} and label {label.shape} {label.dtype}; expected "
                         "variable-length entries per event, or xyze (N, 4) with label (N,).")

  def __len__(self) -> int:
    return len(self._index)

  def points(self, i: int) -> dict:
    """Event ``i``'s points, unmerged: ``xyz`` float32[N, 3], ``energy`` float32[N], ``labels`` int32[N], after
    the energy threshold."""
    if not 0 <= i < len(self._index):
      raise IndexError(f"event {i} out of range for {len(self._index)} events.")
    f, row = self._index[i]
    h = self._open(f)
    where = f"{f}" + ("" if row is None else f" event {row}")
    xyze = np.asarray(h["xyze"][()] if row is None else h["xyze"][row])
    label = np.asarray(h["label"][()] if row is None else h["label"][row])
    if xyze.size % 4 or xyze.size // 4 != label.size:
      raise ValueError(f"{where}: xyze holds {xyze.size} values (4 per point) but label {label.size}; the file is "
                       "inconsistent.")
    xyze = xyze.reshape(-1, 4)
    bad = (label < 0) | (label >= len(self.class_names))
    if np.any(bad):
      raise ValueError(f"{where}: label {int(label[bad][0])} is outside the {len(self.class_names)} classes "
                       f"{self.class_names}; pass class_names= with one name per label value.")
    keep = xyze[:, 3] > self.energy_threshold if self.energy_threshold > 0 else slice(None)
    return {"xyz": xyze[keep, :3].astype(np.float32), "energy": xyze[keep, 3].astype(np.float32),
            "labels": label[keep].astype(np.int32)}

  def __getitem__(self, i: int) -> dict:
    p = self.points(i)
    return _merge_voxels(p["xyz"], p["energy"], {"labels": p["labels"]}, where=f"event {i}")


def log_energy(energy, low: float = 0.01, high: float = 20.0):
  """The papers' energy feature: ``log10(E + low)`` mapped linearly from ``[log10(low), log10(high + low)]`` onto
  ``[-1, 1]`` (0 MeV -> -1, 20 MeV -> 1), float32."""
  lo, hi = np.log10(low), np.log10(high + low)
  return (2 * (np.log10(np.asarray(energy, np.float64) + low) - lo) / (hi - lo) - 1).astype(np.float32)


def synthetic_pilarnet_event(seed, *, size: int = 192, version: int = 2) -> dict:
  """A synthetic event in PILArNet-M's layout (for tests and examples): ``{"point", "cluster", "cluster_extra"}``
  (flat arrays, as the files store them), from :func:`synthetic_lartpc_event` in the ``larcv5`` scheme. Each
  class present becomes one cluster (low-energy scatters first); particle ids are stand-ins by class (shower:
  photon, track: muon, Michel and delta: electron, scatters: -1); the unnamed point columns are zero."""
  from jsparse3d.data._lartpc import synthetic_lartpc_event
  ev = synthetic_lartpc_event(seed, size=size, scheme="larcv5")
  order = np.lexsort((np.arange(len(ev["labels"])), (ev["labels"] + 1) % 5))  # class 4 (scatters) first
  labels = ev["labels"][order]
  point = np.zeros((len(order), 8), np.float32)
  point[:, :3] = ev["coords"][order] + 0.5
  point[:, 3] = ev["energy"][order]
  classes, sizes = np.unique((labels + 1) % 5, return_counts=True)
  motif = (classes - 1) % 5
  pid = np.array([-1, 0, 2, 1, 1])[(motif + 1) % 5]
  rows = [[n, c, c, 0, m] + ([p] if version == 2 else []) for c, (n, m, p) in enumerate(zip(sizes, motif, pid))]
  out = {"point": point.reshape(-1), "cluster": np.asarray(rows, np.int64).reshape(-1)}
  if version == 2:
    out["cluster_extra"] = np.zeros(len(rows) * 5, np.float32)
  return out


def write_pilarnet(path, events) -> Path:
  """Writes events in PILArNet-M's layout to one HDF5 file: each a dict with flat ``point`` (8 columns),
  ``cluster`` (5 columns: v1, or 6: v2) and, for v2, ``cluster_extra`` (5 columns), as
  :func:`synthetic_pilarnet_event` makes them. Checks each event's cluster table against its points first.
  Returns the path."""
  path = Path(path)
  events = list(events)
  if not events:
    raise ValueError("no events to write.")
  version = 2 if "cluster_extra" in events[0] else 1
  columns = _CLUSTER_COLUMNS[version]
  for i, ev in enumerate(events):
    point, cluster = np.asarray(ev["point"]), np.asarray(ev["cluster"])
    if point.size % 8 or cluster.size % columns or (("cluster_extra" in ev) != (version == 2)):
      raise ValueError(f"event {i}: point must hold 8 columns and cluster {columns} (version {version}, as event 0), "
                       f"got {point.size} and {cluster.size} values.")
    if cluster.reshape(-1, columns)[:, 0].sum() != point.size // 8:
      raise ValueError(f"event {i}: the cluster table counts {int(cluster.reshape(-1, columns)[:, 0].sum())} points "
                       f"but point holds {point.size // 8}.")
  h5py = _h5py()
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, "w") as f:
    for name, dtype in (("point", np.float32), ("cluster", np.int64), ("cluster_extra", np.float32)):
      if name == "cluster_extra" and version == 1:
        continue
      ds = f.create_dataset(name, (len(events),), dtype=h5py.vlen_dtype(dtype))
      for i, ev in enumerate(events):
        ds[i] = np.asarray(ev[name], dtype).reshape(-1)
  return path


def synthetic_michel_event(seed, *, size: int = 192) -> dict:
  """A synthetic event in the Michel challenge's layout: ``xyze`` float32[N, 4] (voxel centres and energy) and
  ``label`` int32[N] in the motif classes, from :func:`synthetic_lartpc_event` in the ``larcv5`` scheme."""
  from jsparse3d.data._lartpc import synthetic_lartpc_event
  ev = synthetic_lartpc_event(seed, size=size, scheme="larcv5")
  xyze = np.concatenate([ev["coords"] + 0.5, ev["energy"][:, None]], axis=1).astype(np.float32)
  return {"xyze": xyze, "label": ev["labels"].astype(np.int32)}


def write_michel_challenge(path, events) -> Path:
  """Writes events (dicts with ``xyze`` [N, 4] and ``label`` [N], as :func:`synthetic_michel_event` makes them) to
  one HDF5 file, one variable-length entry per event. Returns the path."""
  path = Path(path)
  events = list(events)
  if not events:
    raise ValueError("no events to write.")
  for i, ev in enumerate(events):
    xyze, label = np.asarray(ev["xyze"]), np.asarray(ev["label"])
    if xyze.ndim != 2 or xyze.shape[1] != 4 or label.shape != (len(xyze),):
      raise ValueError(f"event {i}: xyze must be [N, 4] and label [N], got {xyze.shape} and {label.shape}.")
  h5py = _h5py()
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, "w") as f:
    for name, dtype in (("xyze", np.float32), ("label", np.int32)):
      ds = f.create_dataset(name, (len(events),), dtype=h5py.vlen_dtype(dtype))
      for i, ev in enumerate(events):
        ds[i] = np.asarray(ev[name], dtype).reshape(-1)
  return path
