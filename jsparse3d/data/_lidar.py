"""A seeded generator of spinning-LiDAR scans of street scenes, labelled like SemanticKITTI (the spvnas map).

A scene is a straight street along x: road (with parked cars in a parking strip), kerbside sidewalks, terrain,
and beyond them buildings, fences and trees; cars and trucks drive on the road, people walk on the sidewalks,
poles (some carrying a traffic sign) and bicycles stand at the kerb. Every object is an analytic primitive
(axis-aligned box, vertical cylinder, sphere, or the ground plane), and the scan is a ray cast: ``beams``
elevations spread like a Velodyne HDL-64E (+2 to -24.8 degrees) times ``azimuths`` directions, each ray keeping
its nearest hit within ``max_range``, with centimetre range noise. Remission depends on the material plus noise.
So the scan has the structure that matters to a segmentation network: dense rings on the ground that thin with
range, occlusion shadows behind objects, and classes told apart by shape, height and context.
"""

from __future__ import annotations

import numpy as np

from jsparse3d.data._kitti import CLASS_NAMES

SENSOR_HEIGHT = 1.73  # metres above the road, as on the KITTI car
_C = {name: i for i, name in enumerate(CLASS_NAMES)}
# material remission: mean and spread
_REMISSION = {"car": (0.25, 0.15), "truck": (0.3, 0.15), "bicycle": (0.2, 0.1), "person": (0.3, 0.1),
              "road": (0.25, 0.05), "parking": (0.3, 0.05), "sidewalk": (0.35, 0.05), "terrain": (0.45, 0.1),
              "building": (0.4, 0.15), "fence": (0.3, 0.1), "vegetation": (0.5, 0.15), "trunk": (0.35, 0.1),
              "pole": (0.4, 0.1), "traffic-sign": (0.9, 0.05)}


class _Scene:
  """Primitives as arrays, one list per kind: boxes (lo, hi), cylinders (x, y, radius, z0, z1), spheres (centre,
  radius), each with a class id."""

  def __init__(self):
    self.boxes, self.cylinders, self.spheres = [], [], []

  def box(self, cls, lo, hi):
    self.boxes.append((np.asarray(lo, float), np.asarray(hi, float), _C[cls]))

  def cylinder(self, cls, x, y, r, z0, z1):
    self.cylinders.append((x, y, r, z0, z1, _C[cls]))

  def sphere(self, cls, centre, r):
    self.spheres.append((np.asarray(centre, float), r, _C[cls]))


def _street(rng) -> _Scene:
  s = _Scene()
  ground = -SENSOR_HEIGHT
  half_road = rng.uniform(3.5, 5.0)
  walk = half_road + rng.uniform(2.0, 3.5)
  length = 60.0
  for side in (-1, 1):
    # parked cars in the parking strip next to the kerb
    x = -length + rng.uniform(0, 6)
    while x < length:
      if rng.random() < 0.55:
        y0 = half_road - 2.1 if side > 0 else -half_road + 0.3
        s.box("car", (x, y0, ground), (x + rng.uniform(3.9, 4.6), y0 + 1.8, ground + rng.uniform(1.4, 1.6)))
      x += rng.uniform(5.0, 7.5)
    # kerbside poles (some with a sign), people and bicycles on the sidewalk
    for x in np.arange(-length, length, rng.uniform(12, 20)) + rng.uniform(0, 5):
      y = side * (half_road + 0.4)
      top = ground + rng.uniform(4.0, 7.0)
      s.cylinder("pole", x, y, rng.uniform(0.06, 0.12), ground, top)
      if rng.random() < 0.5:
        s.box("traffic-sign", (x - 0.05, y - 0.35, top - 0.8), (x + 0.05, y + 0.35, top - 0.1))
    for _ in range(rng.integers(0, 6)):
      x, y = rng.uniform(-length, length), side * rng.uniform(half_road + 0.8, walk - 0.4)
      s.cylinder("person", x, y, rng.uniform(0.2, 0.3), ground, ground + rng.uniform(1.55, 1.9))
    for _ in range(rng.integers(0, 3)):
      x, y = rng.uniform(-length, length), side * (walk - 0.5)
      s.box("bicycle", (x, y - 0.2, ground), (x + 1.7, y + 0.2, ground + 1.05))
    # beyond the sidewalk: a fence or a building frontage, with trees on the terrain strip
    x = -length
    while x < length:
      width = rng.uniform(8, 25)
      setback = walk + rng.uniform(3.0, 8.0)
      if rng.random() < 0.7:
        depth, height = rng.uniform(8, 15), rng.uniform(4, 15)
        y0, y1 = (setback, setback + depth) if side > 0 else (-setback - depth, -setback)
        s.box("building", (x, y0, ground), (x + width, y1, ground + height))
      else:
        y = side * (walk + rng.uniform(0.5, 2.0))
        s.box("fence", (x, y - 0.05, ground), (x + width, y + 0.05, ground + rng.uniform(1.0, 2.0)))
      x += width + rng.uniform(1, 6)
    for _ in range(rng.integers(2, 8)):
      x, y = rng.uniform(-length, length), side * rng.uniform(walk + 0.8, walk + 2.5)
      h = rng.uniform(1.8, 3.5)
      s.cylinder("trunk", x, y, rng.uniform(0.12, 0.3), ground, ground + h + 0.5)
      s.sphere("vegetation", (x, y, ground + h + rng.uniform(1.0, 2.0)), rng.uniform(1.2, 2.5))
    for _ in range(rng.integers(0, 6)):  # bushes, half sunk in the terrain
      x, y = rng.uniform(-length, length), side * rng.uniform(walk + 0.5, walk + 3.0)
      s.sphere("vegetation", (x, y, ground), rng.uniform(0.5, 1.2))
  # traffic on the road
  for lane in (-1, 1):
    for _ in range(rng.integers(0, 4)):
      x = rng.uniform(-length, length)
      if abs(x) < 6 and lane * half_road / 2 < 2.5:
        continue  # keep the sensor's own lane clear around it
      y = lane * rng.uniform(0.6, half_road - 2.6) - (lane < 0) * 1.8
      if rng.random() < 0.2:
        s.box("truck", (x, y, ground), (x + rng.uniform(6, 10), y + 2.4, ground + rng.uniform(2.8, 3.6)))
      else:
        s.box("car", (x, y, ground), (x + rng.uniform(3.9, 4.8), y + 1.8, ground + rng.uniform(1.4, 1.7)))
  s.half_road, s.walk = half_road, walk
  return s


def _ray_boxes(d, boxes):
  """Nearest entry distance of rays from the origin into axis-aligned boxes: ``t [R, M]`` (inf: no hit)."""
  if not boxes:
    return np.full((len(d), 0), np.inf)
  lo = np.stack([b[0] for b in boxes])  # [M, 3]
  hi = np.stack([b[1] for b in boxes])
  near = np.full((len(d), len(boxes)), -np.inf)
  far = np.full((len(d), len(boxes)), np.inf)
  for axis in range(3):  # slabs; a ray parallel to one gets a tiny direction instead of 0 (no NaN from 0 * inf)
    da = d[:, axis]
    inv = 1.0 / np.where(np.abs(da) < 1e-12, 1e-12, da)
    t0, t1 = np.multiply.outer(inv, lo[:, axis]), np.multiply.outer(inv, hi[:, axis])
    np.maximum(near, np.minimum(t0, t1), out=near)
    np.minimum(far, np.maximum(t0, t1), out=far)
  return np.where((near <= far) & (near > 0), near, np.inf)


def _ray_cylinders(d, cyls):
  """Rays against vertical finite cylinders (their side surface)."""
  if not cyls:
    return np.full((len(d), 0), np.inf)
  c = np.asarray([cy[:5] for cy in cyls], float)  # x, y, r, z0, z1
  dx, dy, dz = d[:, 0:1], d[:, 1:2], d[:, 2:3]
  a = dx * dx + dy * dy
  b = -2 * (dx * c[None, :, 0] + dy * c[None, :, 1])
  cc = c[None, :, 0] ** 2 + c[None, :, 1] ** 2 - c[None, :, 2] ** 2
  disc = b * b - 4 * a * cc
  with np.errstate(invalid="ignore", divide="ignore"):
    t = (-b - np.sqrt(disc)) / (2 * a)
  z = t * dz
  hit = (disc >= 0) & (t > 0) & (z >= c[None, :, 3]) & (z <= c[None, :, 4])
  return np.where(hit, t, np.inf)


def _ray_spheres(d, spheres):
  if not spheres:
    return np.full((len(d), 0), np.inf)
  centre = np.stack([s[0] for s in spheres])
  r = np.asarray([s[1] for s in spheres])
  b = d @ centre.T  # [R, M]; |d| = 1
  disc = b * b - (np.sum(centre * centre, axis=1) - r * r)[None]
  with np.errstate(invalid="ignore"):
    t = b - np.sqrt(disc)
  return np.where((disc >= 0) & (t > 0), t, np.inf)


def synthetic_lidar_scan(seed, *, beams: int = 64, azimuths: int = 1024, max_range: float = 50.0) -> dict:
  """One scan in the format of :func:`read_semantickitti` with ``label_map="spvnas"``.

  Args:
    seed: anything ``numpy.random.default_rng`` takes; the same seed gives the same scan.
    beams, azimuths: the ray grid (64 x 2048 is a full HDL-64E revolution; 1024 halves the points).
    max_range: metres; rays that hit nothing within it return no point.
  Returns:
    ``points`` float32[N, 4] (x, y, z in metres from the sensor, remission in [0, 1]) and ``labels`` int32[N]
    (spvnas classes 0..18; 255 is never produced).
  """
  if beams < 1 or azimuths < 1 or max_range <= 0:
    raise ValueError(f"beams, azimuths and max_range must be positive, got {beams}, {azimuths}, {max_range}.")
  rng = np.random.default_rng(seed)
  scene = _street(rng)
  elevation = np.deg2rad(np.linspace(2.0, -24.8, beams))
  azimuth = np.linspace(0, 2 * np.pi, azimuths, endpoint=False) + rng.uniform(0, 2 * np.pi / azimuths)
  el, az = np.meshgrid(elevation, azimuth, indexing="ij")
  d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)
  t = np.concatenate([_ray_boxes(d, scene.boxes), _ray_cylinders(d, scene.cylinders),
                      _ray_spheres(d, scene.spheres)], axis=1)
  cls = np.asarray([b[2] for b in scene.boxes] + [c[5] for c in scene.cylinders] + [s[2] for s in scene.spheres],
                   np.int32)
  with np.errstate(divide="ignore"):
    t_ground = np.where(d[:, 2] < 0, -SENSOR_HEIGHT / d[:, 2], np.inf)
  best = np.argmin(t, axis=1) if t.shape[1] else np.zeros(len(d), int)
  t_obj = t[np.arange(len(d)), best] if t.shape[1] else np.full(len(d), np.inf)
  use_obj = t_obj < t_ground
  dist = np.where(use_obj, t_obj, t_ground)
  keep = dist < max_range
  d, dist, use_obj, best = d[keep], dist[keep], use_obj[keep], best[keep]
  xyz = d * dist[:, None]
  ay = np.abs(xyz[:, 1])
  ground_cls = np.where(ay < scene.half_road - 2.2, _C["road"],
                        np.where(ay < scene.half_road, _C["parking"],
                                 np.where(ay < scene.walk, _C["sidewalk"], _C["terrain"])))
  labels = np.where(use_obj, cls[best] if len(cls) else 0, ground_cls).astype(np.int32)
  xyz = xyz + d * rng.normal(0, 0.02, (len(d), 1))
  table = np.zeros((len(CLASS_NAMES), 2))
  for name, mean_sd in _REMISSION.items():
    table[_C[name]] = mean_sd
  remission = np.clip(table[labels, 0] + table[labels, 1] * rng.standard_normal(len(labels)), 0, 1)
  points = np.concatenate([xyz, remission[:, None]], axis=1).astype(np.float32)
  return {"points": points, "labels": labels}


class SyntheticLidar:
  """A dataset of ``num_scans`` synthetic scans: ``ds[i]`` is ``synthetic_lidar_scan((seed, i), ...)``."""

  def __init__(self, num_scans: int, *, seed: int = 0, beams: int = 64, azimuths: int = 1024,
               max_range: float = 50.0):
    if num_scans < 1:
      raise ValueError(f"num_scans must be positive, got {num_scans}.")
    self.num_scans, self.seed = num_scans, seed
    self.kwargs = dict(beams=beams, azimuths=azimuths, max_range=max_range)

  def __len__(self) -> int:
    return self.num_scans

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.num_scans:
      raise IndexError(f"scan {i} out of range for a dataset of {self.num_scans} scans.")
    return synthetic_lidar_scan((self.seed, int(i)), **self.kwargs)
