"""larcv3 HDF5 files (the format of PILArNet), read and written with h5py alone.

Layout (as larcv3 writes it):

  Events/event_id                         (run, subrun, event) per entry
  Data/sparse3d_<producer>_group/
      extents         (first, N) per entry -> rows of voxel_extents / image_meta (one per projection)
      voxel_extents   (first, N, ID)       -> rows of voxels
      image_meta      (valid, projection_id, image_sizes[3], number_of_voxels[3], origin[3])
      voxels          (id, value): id = (x * ny + y) * nz + z, C order over number_of_voxels
  Data/cluster3d_<producer>_group/
      extents             (first, N)       -> rows of projection_extents / image_meta
      projection_extents  (first, N, ID)   -> rows of cluster_extents (one per cluster)
      image_meta
      cluster_extents     (first, N, ID)   -> rows of voxels
      voxels              (id, value)
  Data/particle_<producer>_group/
      extents             (first, N)       -> rows of particles
      particles           one record per particle

Only 3D products of projection 0 are read; files with several projections raise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EXTENTS = np.dtype([("first", "<u4"), ("N", "<u4")])
ID_EXTENTS = np.dtype([("first", "<u4"), ("N", "<u4"), ("ID", "<u4")])
IMAGE_META_3D = np.dtype([("valid", "u1"), ("projection_id", "<u8"), ("image_sizes", "<f8", (3,)),
                          ("number_of_voxels", "<u8", (3,)), ("origin", "<f8", (3,))])
VOXEL = np.dtype([("id", "<u8"), ("value", "<f4")])
EVENT_ID = np.dtype([("run", "<u4"), ("subrun", "<u4"), ("event", "<u4")])
# What write_larcv3 stores for particles (a subset of larcv3's Particle record).
PARTICLE = np.dtype([("id", "<u4"), ("pdg_code", "<i4"), ("energy_init", "<f8"), ("position", "<f8", (3,)),
                     ("momentum", "<f8", (3,)), ("parent_id", "<u4")])


def _h5py():
  try:
    import h5py
  except ImportError as e:  # pragma: no cover - h5py is a declared dependency
    raise ImportError("reading and writing HDF5 files needs h5py: pip install h5py") from e
  return h5py


def _voxel_coords(ids: np.ndarray, shape) -> np.ndarray:
  nx, ny, nz = (int(s) for s in shape)
  ids = ids.astype(np.int64)
  return np.stack([ids // (ny * nz), ids // nz % ny, ids % nz], axis=1).astype(np.int32)


def _voxel_ids(coords: np.ndarray, shape) -> np.ndarray:
  nx, ny, nz = (int(s) for s in shape)
  c = coords.astype(np.int64)
  return ((c[:, 0] * ny + c[:, 1]) * nz + c[:, 2]).astype(np.uint64)


class Larcv3Dataset:
  """Random access to the events of a larcv3 file, opened lazily (and reopened in a forked worker).

  ``ds[i]`` returns a dict with ``coords`` int32[N, 3] (voxel indices), ``energy`` float32[N], ``event_id``
  (run, subrun, event), ``meta`` (number_of_voxels, image_sizes, origin); plus ``labels`` int32[N] when ``labels``
  names a sparse3d product whose voxel values are class ids, ``cluster`` int32[N] (the index of the cluster holding
  each voxel, -1 if none) when ``cluster3d`` names a cluster3d product, and ``particles`` (structured records) when
  ``particles`` names a particle product. Voxels are in increasing id (C) order.

  Args:
    path: the .h5 file.
    sparse3d: producer of the input sparse3d product (``Data/sparse3d_<sparse3d>_group``).
    labels, cluster3d, particles: optional producers, as above.
  """

  def __init__(self, path, *, sparse3d: str = "data", labels: str | None = None, cluster3d: str | None = None,
               particles: str | None = None):
    self.path = Path(path)
    if not self.path.exists():
      raise FileNotFoundError(f"larcv3 file {self.path} does not exist.")
    self._products = {"sparse3d": sparse3d, "labels": labels, "cluster3d": cluster3d, "particles": particles}
    self._file, self._pid = None, None
    f = self._open()
    groups = {"sparse3d": f"sparse3d_{sparse3d}", "labels": labels and f"sparse3d_{labels}",
              "cluster3d": cluster3d and f"cluster3d_{cluster3d}", "particles": particles and f"particle_{particles}"}
    available = sorted(k[: -len("_group")] for k in f.get("Data", {}).keys())
    self._groups = {}
    for role, name in groups.items():
      if name is None:
        continue
      if f"{name}_group" not in f.get("Data", {}):
        raise KeyError(f"{self.path} has no product {name!r} (for {role}); it has {available}. Pass the producer "
                       f"name without the type prefix, e.g. sparse3d={available[0].split('_', 1)[-1]!r}."
                       if available else f"{self.path} has no Data group: is it a larcv3 file?")
      self._groups[role] = f"Data/{name}_group"
    if "Events" not in f or "event_id" not in f["Events"]:
      raise ValueError(f"{self.path} has no Events/event_id table: is it a larcv3 file?")
    self._len = len(f["Events/event_id"])
    for group in self._groups.values():
      n = len(f[group]["extents"])
      if n != self._len:
        raise ValueError(f"{self.path}: product {group} has {n} entries but the file has {self._len} events; "
                         "the file is truncated or was written incompletely.")

  def _open(self):
    if self._file is None or self._pid != os.getpid():
      self._file = _h5py().File(self.path, "r")
      self._pid = os.getpid()
    return self._file

  def __len__(self) -> int:
    return self._len

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_file"} | {"_file": None}

  def _rows(self, group, table, extent, what):
    first, n = int(extent["first"]), int(extent["N"])
    ds = group[table]
    if first + n > len(ds):
      raise ValueError(f"{self.path}: {group.name}/{table} has {len(ds)} rows, but an entry asks for rows "
                       f"{first}..{first + n} ({what}); the file is truncated.")
    return ds[first:first + n]

  def _projection(self, group, i, extent_table):
    extent = group["extents"][i]
    projections = self._rows(group, extent_table, extent, "projections")
    metas = self._rows(group, "image_meta", extent, "image metas")
    if len(projections) != 1:
      raise ValueError(f"{self.path}: entry {i} of {group.name} has {len(projections)} projections; only "
                       "single-projection 3D products are supported.")
    meta = metas[0]
    shape = np.asarray(meta["number_of_voxels"], np.int64)
    if shape.shape != (3,) or np.any(shape <= 0):
      raise ValueError(f"{self.path}: entry {i} of {group.name} has an invalid image meta "
                       f"(number_of_voxels {meta['number_of_voxels']}); a 3D meta needs 3 positive sizes.")
    return projections[0], meta

  def _sparse(self, group, i):
    extent, meta = self._projection(group, i, "voxel_extents")
    voxels = self._rows(group, "voxels", extent, "voxels")
    shape = meta["number_of_voxels"]
    total = int(np.prod(shape.astype(np.int64)))
    if len(voxels) and int(voxels["id"].max()) >= total:
      raise ValueError(f"{self.path}: entry {i} of {group.name} has voxel id {int(voxels['id'].max())} outside "
                       f"its image meta of {tuple(int(s) for s in shape)} voxels; the meta is wrong.")
    order = np.argsort(voxels["id"], kind="stable")
    return voxels["id"][order], voxels["value"][order], meta

  def __getitem__(self, i: int) -> dict:
    if not -self._len <= i < self._len:
      raise IndexError(f"event {i} out of range for {self.path} with {self._len} events.")
    i = int(i) % self._len
    f = self._open()
    ids, values, meta = self._sparse(f[self._groups["sparse3d"]], i)
    if len(np.unique(ids)) != len(ids):
      raise ValueError(f"{self.path}: entry {i} has duplicate voxel ids in {self._groups['sparse3d']}.")
    shape = meta["number_of_voxels"]
    eid = f["Events/event_id"][i]
    out = {"coords": _voxel_coords(ids, shape), "energy": values.astype(np.float32),
           "event_id": tuple(int(eid[k]) for k in ("run", "subrun", "event")),
           "meta": {"number_of_voxels": tuple(int(s) for s in shape),
                    "image_sizes": tuple(float(s) for s in meta["image_sizes"]),
                    "origin": tuple(float(s) for s in meta["origin"])}}
    if "labels" in self._groups:
      lids, lvalues, lmeta = self._sparse(f[self._groups["labels"]], i)
      if tuple(lmeta["number_of_voxels"]) != tuple(shape):
        raise ValueError(f"{self.path}: entry {i}: label meta {tuple(lmeta['number_of_voxels'])} differs from the "
                         f"data meta {tuple(shape)}.")
      pos = np.searchsorted(lids, ids)
      found = (pos < len(lids)) & (lids[np.minimum(pos, len(lids) - 1)] == ids)
      if not found.all():
        raise ValueError(f"{self.path}: entry {i}: {int((~found).sum())} voxels of {self._groups['sparse3d']} have no "
                         f"label in {self._groups['labels']}; labels must cover every input voxel.")
      lab = lvalues[pos]
      if np.any(lab != np.round(lab)) or np.any(lab < 0):
        raise ValueError(f"{self.path}: entry {i}: {self._groups['labels']} holds values that are not class ids "
                         "(non-negative integers).")
      out["labels"] = lab.astype(np.int32)
    if "cluster3d" in self._groups:
      out["cluster"] = self._clusters(f[self._groups["cluster3d"]], i, ids, shape)
    if "particles" in self._groups:
      g = f[self._groups["particles"]]
      out["particles"] = self._rows(g, "particles", g["extents"][i], "particles")
    return out

  def _clusters(self, group, i, ids, shape):
    projection, meta = self._projection(group, i, "projection_extents")
    if tuple(meta["number_of_voxels"]) != tuple(shape):
      raise ValueError(f"{self.path}: entry {i}: cluster meta {tuple(meta['number_of_voxels'])} differs from the "
                       f"data meta {tuple(shape)}.")
    clusters = self._rows(group, "cluster_extents", projection, "clusters")
    cluster = np.full(len(ids), -1, np.int32)
    for c, ext in enumerate(clusters):
      vox = self._rows(group, "voxels", ext, f"voxels of cluster {c}")["id"]
      pos = np.searchsorted(ids, vox)
      hit = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == vox)
      cluster[pos[hit]] = c
    return cluster


def write_larcv3(path, events, *, size=192, pitch_cm: float = 0.3, origin=(0.0, 0.0, 0.0), sparse3d: str = "data",
                 labels: str | None = "semantics", cluster3d: str | None = None, particles: str | None = None,
                 compression: str | None = "gzip") -> Path:
  """Writes events in the larcv3 layout that :class:`Larcv3Dataset` (and larcv3 itself) reads.

  Args:
    path: output .h5 file (overwritten).
    events: iterable of dicts with ``coords`` int[N, 3] inside the image, ``energy`` float[N]; optionally
      ``labels`` int[N] (written as sparse3d ``labels``), ``cluster`` int[N] (-1 for none; written as cluster3d
      ``cluster3d``), ``particles`` (records with the fields of :data:`PARTICLE`), ``event_id`` (run, subrun, event).
    size: voxels per axis (int or 3 ints); pitch_cm: voxel size; origin: lower corner in cm.
    sparse3d, labels, cluster3d, particles: producer names of the products to write (None skips one).
  """
  h5py = _h5py()
  shape = np.broadcast_to(np.asarray(size, np.int64), (3,))
  meta = np.zeros(1, IMAGE_META_3D)
  meta["valid"], meta["projection_id"] = 1, 0
  meta["number_of_voxels"], meta["image_sizes"] = shape, shape * float(pitch_cm)
  meta["origin"] = np.asarray(origin, np.float64)
  tables = {"event_id": [], "sparse3d": [], "labels": [], "cluster3d": [], "particles": []}
  for n, ev in enumerate(events):
    coords = np.asarray(ev["coords"])
    if coords.ndim != 2 or coords.shape[1] != 3 or len(coords) != len(np.asarray(ev["energy"])):
      raise ValueError(f"event {n}: coords must be [N, 3] with one energy per voxel, got {coords.shape} and "
                       f"{np.shape(ev['energy'])}.")
    if len(coords) and (coords.min() < 0 or np.any(coords.max(axis=0) >= shape)):
      raise ValueError(f"event {n}: coordinates outside the {tuple(shape)} image.")
    ids = _voxel_ids(coords, shape)
    tables["event_id"].append(tuple(ev.get("event_id", (0, 0, n))))
    tables["sparse3d"].append((ids, np.asarray(ev["energy"], np.float32)))
    if labels is not None and "labels" in ev:
      tables["labels"].append((ids, np.asarray(ev["labels"]).astype(np.float32)))
    if cluster3d is not None and "cluster" in ev:
      cl = np.asarray(ev["cluster"])
      tables["cluster3d"].append([ids[cl == c] for c in range(int(cl.max()) + 1 if len(cl) else 0)])
    if particles is not None and "particles" in ev:
      tables["particles"].append(np.asarray(ev["particles"], PARTICLE))
  num = len(tables["event_id"])
  for key in ("labels", "cluster3d", "particles"):
    if tables[key] and len(tables[key]) != num:
      raise ValueError(f"{key} were given for {len(tables[key])} of {num} events; give them for all or none.")
  opts = dict(compression=compression, maxshape=(None,), chunks=True)

  def write(group, name, array):
    group.create_dataset(name, data=array, **opts)

  def extents(counts, dtype=EXTENTS, ids=None):
    counts = np.asarray(counts, np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else np.zeros(0, np.int64)
    rows = np.zeros(len(counts), dtype)
    rows["first"], rows["N"] = first, counts
    if ids is not None:
      rows["ID"] = ids
    return rows

  def sparse_group(data, name):
    g = f.create_group(f"Data/sparse3d_{name}_group")
    write(g, "extents", extents(np.ones(len(data), np.int64)))
    write(g, "voxel_extents", extents([len(ids) for ids, _ in data], ID_EXTENTS, 0))
    write(g, "image_meta", np.repeat(meta, len(data)))
    vox = np.zeros(sum(len(ids) for ids, _ in data), VOXEL)
    if len(vox):
      vox["id"] = np.concatenate([ids for ids, _ in data])
      vox["value"] = np.concatenate([v for _, v in data])
    write(g, "voxels", vox)

  path = Path(path)
  with h5py.File(path, "w") as f:
    f.create_group("Events").create_dataset("event_id", data=np.array(tables["event_id"], EVENT_ID), **opts)
    sparse_group(tables["sparse3d"], sparse3d)
    if tables["labels"]:
      sparse_group(tables["labels"], labels)
    if tables["cluster3d"]:
      g = f.create_group(f"Data/cluster3d_{cluster3d}_group")
      per_event = [len(c) for c in tables["cluster3d"]]
      write(g, "extents", extents(np.ones(num, np.int64)))
      write(g, "projection_extents", extents(per_event, ID_EXTENTS, 0))
      write(g, "image_meta", np.repeat(meta, num))
      flat = [ids for c in tables["cluster3d"] for ids in c]
      write(g, "cluster_extents", extents([len(ids) for ids in flat], ID_EXTENTS,
                                          np.concatenate([np.arange(n) for n in per_event]) if flat else None))
      vox = np.zeros(sum(len(ids) for ids in flat), VOXEL)
      if len(vox):
        vox["id"] = np.concatenate(flat)
        vox["value"] = 1.0
      write(g, "voxels", vox)
    if tables["particles"]:
      g = f.create_group(f"Data/particle_{particles}_group")
      write(g, "extents", extents([len(p) for p in tables["particles"]]))
      write(g, "particles", np.concatenate(tables["particles"]) if num else np.zeros(0, PARTICLE))
  return path
