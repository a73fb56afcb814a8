"""SemanticKITTI scans: ``.bin`` points, ``.label`` classes, the two learning maps, the sequence layout, voxelization.

Learning maps (raw SemanticKITTI ids -> training classes):
- ``"official"`` (the benchmark's semantic-kitti.yaml): 0 unlabeled, 1..19 the evaluated classes; moving objects
  join their static class, bus / on-rails join other-vehicle, lane-marking joins road.
- ``"spvnas"`` (the SPVNAS / MinkUNet training code): the same 19 classes as 0..18, with 255 = ignore, except that
  bus, on-rails, lane-marking and their moving variants are ignored instead of merged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASS_NAMES = ("car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist", "road",
               "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk", "terrain", "pole",
               "traffic-sign")
IGNORE = 255
IGNORE_INDEX = {"official": 0, "spvnas": IGNORE}  # the label each map gives unlabelled and ignored points

# raw id -> (name, official class or 0, spvnas class or IGNORE)
_RAW = {
    0: ("unlabeled", 0, IGNORE), 1: ("outlier", 0, IGNORE),
    10: ("car", 1, 0), 11: ("bicycle", 2, 1), 13: ("bus", 5, IGNORE), 15: ("motorcycle", 3, 2),
    16: ("on-rails", 5, IGNORE), 18: ("truck", 4, 3), 20: ("other-vehicle", 5, 4), 30: ("person", 6, 5),
    31: ("bicyclist", 7, 6), 32: ("motorcyclist", 8, 7), 40: ("road", 9, 8), 44: ("parking", 10, 9),
    48: ("sidewalk", 11, 10), 49: ("other-ground", 12, 11), 50: ("building", 13, 12), 51: ("fence", 14, 13),
    52: ("other-structure", 0, IGNORE), 60: ("lane-marking", 9, IGNORE), 70: ("vegetation", 15, 14),
    71: ("trunk", 16, 15), 72: ("terrain", 17, 16), 80: ("pole", 18, 17), 81: ("traffic-sign", 19, 18),
    99: ("other-object", 0, IGNORE),
    252: ("moving-car", 1, 0), 253: ("moving-bicyclist", 7, 6), 254: ("moving-person", 6, 5),
    255: ("moving-motorcyclist", 8, 7), 256: ("moving-on-rails", 5, IGNORE), 257: ("moving-bus", 5, IGNORE),
    258: ("moving-truck", 4, 3), 259: ("moving-other-vehicle", 5, 4),
}
SPLITS = {"train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"), "val": ("08",),
          "test": tuple(f"{s:02d}" for s in range(11, 22))}


def learning_map(label_map: str = "official") -> np.ndarray:
  """``int32[260]``: class of each raw id under ``label_map``; ids that SemanticKITTI does not define map to -1."""
  column = {"official": 1, "spvnas": 2}.get(label_map)
  if column is None:
    raise ValueError(f"label_map must be 'official' or 'spvnas', got {label_map!r}.")
  table = np.full(260, -1, np.int32)
  for raw, entry in _RAW.items():
    table[raw] = entry[column]
  return table


def ignore_index(label_map: str = "official") -> int:
  """The label of unlabelled (ignored) points under ``label_map``: 0 for ``"official"``, 255 for ``"spvnas"``;
  pass it as ``ignore_index=`` to the losses, metrics and train steps."""
  learning_map(label_map)
  return IGNORE_INDEX[label_map]


def read_semantickitti(bin_path, label_path=None, *, label_map: str = "official") -> dict:
  """One scan: ``points`` float32[N, 4] (x, y, z in metres, remission) and ``labels`` int32[N].

  Labels are the low 16 bits of each ``.label`` word mapped by ``label_map`` (official: 0 unlabeled and 1..19;
  spvnas: 0..18 and 255 ignore; :func:`ignore_index` gives the ignored value). ``label_path=None`` reads the scan
  unlabelled: every point gets the ignored value. ``instances`` (the high 16 bits) come too when there is a label
  file.

  Example:
    >>> np.random.default_rng(0).random((100, 4), dtype=np.float32).tofile("000000.bin")  # a scan's format
    >>> np.full(100, 40, np.uint32).tofile("000000.label")                                 # 40: road
    >>> scan = read_semantickitti("000000.bin", "000000.label", label_map="spvnas")
    >>> ignore_index("spvnas")   # for segmentation_loss(..., ignore_index=...)
    255
  """
  table = learning_map(label_map)
  bin_path = Path(bin_path)
  raw = np.fromfile(bin_path, np.float32)
  if raw.size % 4:
    raise ValueError(f"{bin_path}: {raw.size * 4} bytes is not a whole number of (x, y, z, remission) float32 "
                     "records of 16 bytes; the file is truncated or not a SemanticKITTI scan.")
  points = raw.reshape(-1, 4)
  if not np.isfinite(points).all():
    bad = int((~np.isfinite(points)).any(axis=1).sum())
    raise ValueError(f"{bin_path}: {bad} points have NaN or infinite values; drop them before voxelizing.")
  out = {"points": points}
  if label_path is None:
    out["labels"] = np.full(len(points), IGNORE_INDEX[label_map], np.int32)
    return out
  label_path = Path(label_path)
  words = np.fromfile(label_path, np.uint32)
  if len(words) != len(points):
    raise ValueError(f"{label_path} has {len(words)} labels for the {len(points)} points of {bin_path}; they must "
                     "match one to one (is it the label file of another scan?).")
  semantic = (words & 0xFFFF).astype(np.int64)
  unknown = (semantic >= len(table)) | (table[np.minimum(semantic, len(table) - 1)] < 0)
  if unknown.any():
    raise ValueError(f"{label_path}: raw semantic ids {sorted(set(semantic[unknown].tolist()))[:10]} are not "
                     "SemanticKITTI classes (valid: 0, 1, 10..99, 252..259).")
  out["labels"] = table[semantic]
  out["instances"] = (words >> 16).astype(np.int32)
  return out


def voxelize(points: np.ndarray, voxel_size: float = 0.05):
  """Voxel coordinates ``floor(xyz / voxel_size)`` of each point and the unique voxels.

  Returns:
    ``(coords int32[M, 3], inverse int32[N])``: the unique voxels in C order and each point's voxel row, so that
    per-voxel values are ``np.bincount(inverse, ...)`` and per-point predictions are ``voxel_values[inverse]``.
  """
  xyz = np.asarray(points)[:, :3]
  if voxel_size <= 0:
    raise ValueError(f"voxel_size must be positive, got {voxel_size}.")
  if not np.isfinite(xyz).all():
    raise ValueError("points hold NaN or infinite coordinates; drop them before voxelizing.")
  cells = np.floor(xyz / voxel_size)
  if np.abs(cells).max(initial=0) >= 2 ** 17:
    raise ValueError(f"points reach {np.abs(xyz).max():.1f} m, beyond the coordinate range (2^17 voxels of "
                     f"{voxel_size} m per side of 0); crop the scan or use larger voxels.")
  coords, inverse = np.unique(cells.astype(np.int32), axis=0, return_inverse=True)
  return coords, inverse.reshape(-1).astype(np.int32)


def scan_to_voxels(scan: dict, voxel_size: float = 0.05) -> dict:
  """A scan -> a voxel event for sparse networks (MinkUNet): one row per occupied voxel.

  Each voxel takes the features (x, y, z, remission) and label of the first of its points in scan order, as
  SPVNAS's quantization does; ignored labels stay as they are (train with ``ignore_index=``). Returns ``coords``
  int32[M, 3], ``feats`` float32[M, 4], ``labels`` int32[M], ``inverse`` int32[N] (each point's voxel row, for
  per-point predictions) and ``point_labels`` int32[N] (every point's own label, for per-point evaluation).
  """
  coords, inverse = voxelize(scan["points"], voxel_size)
  first = np.full(len(coords), len(inverse), np.int64)
  np.minimum.at(first, inverse, np.arange(len(inverse)))
  labels = np.asarray(scan["labels"], np.int32)[first]
  return {"coords": coords, "feats": np.asarray(scan["points"], np.float32)[first],
          "labels": labels, "inverse": inverse, "point_labels": np.asarray(scan["labels"], np.int32)}


class SemanticKittiDataset:
  """Scans of a SemanticKITTI split: ``root/sequences/<seq>/velodyne/<frame>.bin`` and ``labels/<frame>.label``.

  ``ds[i]`` is :func:`read_semantickitti` of the i-th scan (sequences in order, frames sorted) plus ``sequence``
  and ``frame``. A scan without its ``.label`` file is an error unless ``unlabelled=True`` (the test split has
  none): then its points carry :attr:`ignore_index`.

  Attributes:
    ignore_index: the label of unlabelled points under ``label_map`` (see :func:`ignore_index`).
  """

  def __init__(self, root, split: str = "train", *, label_map: str = "official", sequences=None,
               unlabelled: bool = False):
    self.ignore_index = ignore_index(label_map)
    self.unlabelled = unlabelled
    if sequences is None:
      if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r} (or pass sequences=).")
      sequences = SPLITS[split]
    self.root, self.label_map = Path(root), label_map
    base = self.root / "sequences"
    if not base.is_dir():
      raise FileNotFoundError(f"{base} does not exist: root must be the folder that holds sequences/.")
    self.files = []
    for seq in sequences:
      velodyne = base / seq / "velodyne"
      if not velodyne.is_dir():
        raise FileNotFoundError(f"sequence {seq}: {velodyne} does not exist.")
      self.files += [(seq, p) for p in sorted(velodyne.glob("*.bin"))]

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> dict:
    seq, path = self.files[i]
    label = path.parent.parent / "labels" / (path.stem + ".label")
    if not label.exists() and not self.unlabelled:
      raise FileNotFoundError(f"{label} does not exist: scan {path} has no labels. Pass unlabelled=True to read "
                              "scans without labels (every point then carries ignore_index).")
    out = read_semantickitti(path, label if label.exists() else None, label_map=self.label_map)
    return out | {"sequence": seq, "frame": path.stem}
