"""Part segmentation of object point clouds: the ShapeNet-part reader and a synthetic stand-in with its layout.

ShapeNet-part (the normal-resampled release PVCNN trains on) has 16 object categories and 50 part labels; every
cloud is ``x y z nx ny nz part`` rows and belongs to one category, whose parts are a fixed range of the 50.
Both sources give events ``{"points": float32[N, 6], "labels": int32[N], "shape": int}`` with ``N`` fixed (points
are resampled), which :func:`collate_shapes` stacks for :class:`jsparse3d.models.PVCNN`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CATEGORIES = ("Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar", "Knife", "Lamp", "Laptop", "Motorbike",
              "Mug", "Pistol", "Rocket", "Skateboard", "Table")
PARTS_PER_CATEGORY = (4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3)
PART_OFFSETS = tuple(int(v) for v in np.cumsum((0,) + PARTS_PER_CATEGORY[:-1]))
NUM_PARTS = sum(PARTS_PER_CATEGORY)  # 50


def _template(category: int):
  """A category's fixed layout: per part a primitive (0 box, 1 cylinder, 2 sphere), an axis, a centre, a size."""
  rng = np.random.default_rng([7, category])
  parts = []
  for j in range(PARTS_PER_CATEGORY[category]):
    kind = int(rng.integers(0, 3))
    centre = rng.uniform(-0.6, 0.6, 3) if j else np.zeros(3)
    size = rng.uniform(0.15, 0.6, 3) * (1.6 if j == 0 else 1.0)
    parts.append((kind, int(rng.integers(0, 3)), centre, size))
  return parts


def _sample_box(rng, n, size):
  """Points on the surface of a box with half-sizes ``size`` (faces chosen by area) and their normals."""
  areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]] * 2)
  face = rng.choice(6, n, p=areas / areas.sum())
  axis, sign = face % 3, np.where(face < 3, 1.0, -1.0)
  p = rng.uniform(-1, 1, (n, 3)) * size
  p[np.arange(n), axis] = sign * size[axis]
  normal = np.zeros((n, 3))
  normal[np.arange(n), axis] = sign
  return p, normal


def _sample_cylinder(rng, n, size, axis):
  """Side and caps of a cylinder along ``axis`` (radius from the other two half-sizes, half-length size[axis])."""
  r, h = float(np.mean(np.delete(size, axis))), float(size[axis])
  side, cap = 2 * np.pi * r * 2 * h, 2 * np.pi * r * r
  on_side = rng.random(n) < side / (side + cap)
  phi = rng.uniform(0, 2 * np.pi, n)
  rad = np.where(on_side, r, r * np.sqrt(rng.random(n)))
  along = np.where(on_side, rng.uniform(-h, h, n), np.where(rng.random(n) < 0.5, h, -h))
  local = np.stack([rad * np.cos(phi), rad * np.sin(phi), along], axis=1)
  normal = np.where(on_side[:, None], np.stack([np.cos(phi), np.sin(phi), np.zeros(n)], axis=1),
                    np.stack([np.zeros(n), np.zeros(n), np.sign(along)], axis=1))
  order = [(1, 2, 0), (2, 0, 1), (0, 1, 2)][axis]  # puts the local z on ``axis``
  return local[:, order], normal[:, order]


def _sample_sphere(rng, n, size):
  u = rng.standard_normal((n, 3))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  p = u * size  # an ellipsoid
  normal = u / size
  return p, normal / np.linalg.norm(normal, axis=1, keepdims=True)


def synthetic_part_shape(seed, *, num_points: int = 2048, category: int | None = None) -> dict:
  """One object of a random (or the given) category: its parts are primitives of a fixed per-category layout,
  sized and placed with per-object variation, sampled uniformly over their surfaces, centred and scaled into the
  unit sphere.

  Returns:
    ``points`` float32[num_points, 6] (xyz, unit normal), ``labels`` int32[num_points] (global part ids 0..49),
    ``shape`` int (category 0..15).
  """
  if num_points < 1:
    raise ValueError(f"num_points must be positive, got {num_points}.")
  rng = np.random.default_rng(seed)
  c = int(rng.integers(0, len(CATEGORIES))) if category is None else int(category)
  if not 0 <= c < len(CATEGORIES):
    raise ValueError(f"category must be in 0..{len(CATEGORIES) - 1}, got {category}.")
  parts = _template(c)
  sizes = [size * rng.uniform(0.8, 1.25, 3) for _, _, _, size in parts]
  centres = [centre + rng.normal(0, 0.04, 3) for _, _, centre, _ in parts]
  areas = np.array([s[0] * s[1] + s[1] * s[2] + s[0] * s[2] for s in sizes])
  counts = rng.multinomial(num_points, areas / areas.sum())
  xyz, normals, labels = [], [], []
  for j, ((kind, axis, _, _), size, centre, n) in enumerate(zip(parts, sizes, centres, counts)):
    if kind == 0:
      p, nrm = _sample_box(rng, n, size)
    elif kind == 1:
      p, nrm = _sample_cylinder(rng, n, size, axis)
    else:
      p, nrm = _sample_sphere(rng, n, size)
    xyz.append(p + centre)
    normals.append(nrm)
    labels.append(np.full(n, PART_OFFSETS[c] + j, np.int32))
  xyz, normals, labels = np.concatenate(xyz), np.concatenate(normals), np.concatenate(labels)
  xyz = xyz + rng.normal(0, 0.005, xyz.shape)
  xyz -= xyz.mean(axis=0)
  xyz /= np.linalg.norm(xyz, axis=1).max()
  order = rng.permutation(num_points)
  points = np.concatenate([xyz, normals], axis=1)[order].astype(np.float32)
  return {"points": points, "labels": labels[order], "shape": c}


class SyntheticShapeParts:
  """``ds[i]`` is ``synthetic_part_shape((seed, i), num_points=...)``."""

  def __init__(self, num_shapes: int, *, seed: int = 0, num_points: int = 2048):
    if num_shapes < 1:
      raise ValueError(f"num_shapes must be positive, got {num_shapes}.")
    self.num_shapes, self.seed, self.num_points = num_shapes, seed, num_points

  def __len__(self) -> int:
    return self.num_shapes

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.num_shapes:
      raise IndexError(f"shape {i} out of range for a dataset of {self.num_shapes} shapes.")
    return synthetic_part_shape((self.seed, int(i)), num_points=self.num_points)


class ShapeNetPart:
  """The ShapeNet-part release with normals (``shapenetcore_partanno_segmentation_benchmark_v0_normal``).

  Layout: ``root/synsetoffset2category.txt`` (category name, synset id), ``root/<synset>/<model>.txt`` (rows
  ``x y z nx ny nz part``, parts 0..49), ``root/train_test_split/shuffled_<split>_file_list.json``.
  ``ds[i]`` resamples the i-th cloud to ``num_points`` (without replacement when it has enough points) with a
  generator seeded by ``(seed, i)``, so an index always gives the same points.
  """

  def __init__(self, root, split: str = "train", *, num_points: int = 2048, seed: int = 0):
    self.root = Path(root)
    if split not in ("train", "val", "test"):
      raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}.")
    table = self.root / "synsetoffset2category.txt"
    if not table.is_file():
      raise FileNotFoundError(f"{table} does not exist: root must be the folder of the ShapeNet-part release with "
                              "normals (shapenetcore_partanno_segmentation_benchmark_v0_normal).")
    names = dict(line.split() for line in table.read_text().splitlines() if line.strip())
    unknown = sorted(set(names) - set(CATEGORIES))
    if unknown:
      raise ValueError(f"{table} names categories {unknown} that ShapeNet-part does not have.")
    category_of = {synset: CATEGORIES.index(name) for name, synset in names.items()}
    listing = self.root / "train_test_split" / f"shuffled_{split}_file_list.json"
    if not listing.is_file():
      raise FileNotFoundError(f"{listing} does not exist (the split files come with the release).")
    self.files = []
    for entry in json.loads(listing.read_text()):
      _, synset, model = entry.split("/")
      self.files.append((category_of[synset], self.root / synset / f"{model}.txt"))
    self.num_points, self.seed = num_points, seed

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> dict:
    c, path = self.files[i]
    rows = np.loadtxt(path, dtype=np.float32, ndmin=2)
    if rows.shape[1] != 7:
      raise ValueError(f"{path}: rows must be 'x y z nx ny nz part' (7 columns), got {rows.shape[1]}.")
    labels = rows[:, 6].astype(np.int32)
    lo, hi = PART_OFFSETS[c], PART_OFFSETS[c] + PARTS_PER_CATEGORY[c]
    if labels.min() < lo or labels.max() >= hi:
      raise ValueError(f"{path}: part labels {sorted(set(labels.tolist()))} are outside {CATEGORIES[c]}'s parts "
                       f"{lo}..{hi - 1}.")
    rng = np.random.default_rng([self.seed, i])
    pick = rng.choice(len(rows), self.num_points, replace=len(rows) < self.num_points)
    return {"points": rows[pick, :6], "labels": labels[pick], "shape": c}


def collate_shapes(events, *, num_shapes: int = len(CATEGORIES), capacity: int | None = None):
  """Fixed-size clouds -> ``((points float32[B, N, 6], shape_one_hot float32[B, num_shapes]), labels int32[B, N])``.

  ``capacity`` is accepted for :class:`Loader` and unused: every cloud already has the same number of points.
  """
  sizes = {len(ev["points"]) for ev in events}
  if len(sizes) > 1:
    raise ValueError(f"clouds have different point counts {sorted(sizes)}; resample them to one size first.")
  points = np.stack([np.asarray(ev["points"], np.float32) for ev in events])
  labels = np.stack([np.asarray(ev["labels"], np.int32) for ev in events])
  one_hot = np.eye(num_shapes, dtype=np.float32)[[int(ev["shape"]) for ev in events]]
  return (points, one_hot), labels
