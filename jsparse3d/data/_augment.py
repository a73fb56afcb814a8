"""Training augmentation of LiDAR scans, as SPVNAS and MinkUNet train on SemanticKITTI."""

from __future__ import annotations

import numpy as np


def augment_lidar(scan: dict, rng: np.random.Generator, *, rotate: bool = True, flip: bool = False,
                  scale: tuple[float, float] | None = (0.95, 1.05), jitter: float = 0.0) -> dict:
  """A randomly transformed copy of ``scan`` (points ``[N, >=3]``, x, y, z first, in metres).

  In order: rotation about z by an angle uniform in [0, 2 pi), mirror of x and of y each with probability 1/2,
  one scale factor uniform in ``scale`` for all three axes, then Gaussian noise of standard deviation ``jitter``
  metres per coordinate. The defaults are SPVNAS's SemanticKITTI training (rotation and 0.95-1.05 scaling).
  Other columns (remission) and per-point arrays (labels) are kept as they are.

  Args:
    scan: a dict with ``points`` (e.g. from :func:`read_semantickitti` or :func:`synthetic_lidar_scan`).
    rng: the randomness; the :class:`Loader` passes one seeded by (seed, epoch, index), so augmented batches are
      reproducible.
  Returns:
    ``scan`` with new ``points``.

  Example:
    >>> from jsparse3d import data
    >>> dataset = data.SyntheticLidar(4, beams=16, azimuths=256)
    >>> loader = data.Loader(dataset, 2, transform=augment_lidar, collate_fn=data.collate_points, voxel_size=0.05,
    ...                      num_steps=2)
    >>> batches = list(loader)
  """
  points = np.asarray(scan["points"], np.float32)
  if points.ndim != 2 or points.shape[1] < 3:
    raise ValueError(f"augment_lidar: points must be [N, >=3] with x, y, z first, got {points.shape}.")
  if scale is not None and not 0 < scale[0] <= scale[1]:
    raise ValueError(f"augment_lidar: scale must be (low, high) with 0 < low <= high, got {scale}.")
  if jitter < 0:
    raise ValueError(f"augment_lidar: jitter is a standard deviation in metres, got {jitter}.")
  xyz = points[:, :3].astype(np.float64)
  if rotate:
    theta = rng.uniform(0.0, 2 * np.pi)
    c, s = np.cos(theta), np.sin(theta)
    xyz = xyz @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
  if flip:
    xyz[:, :2] *= np.where(rng.random(2) < 0.5, -1.0, 1.0)
  if scale is not None:
    xyz *= rng.uniform(*scale)
  if jitter:
    xyz += rng.normal(0.0, jitter, xyz.shape)
  out = points.copy()
  out[:, :3] = xyz
  return {**scan, "points": out}
