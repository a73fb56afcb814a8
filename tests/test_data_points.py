"""Point-cloud data: the synthetic LiDAR ray cast, synthetic part shapes, the ShapeNet-part reader, point batching."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jsparse3d import data
from jsparse3d import training
from jsparse3d.data import _lidar
from jsparse3d.data import _shapes
from jsparse3d.data._kitti import CLASS_NAMES


def _march(d, inside, t_max=60.0, step=1e-3):
  """Brute force: the first distance along unit ray ``d`` where ``inside(points)`` holds (inf if none)."""
  t = np.arange(step, t_max, step)
  hit = inside(t[:, None] * d[None, :])
  return t[np.argmax(hit)] if hit.any() else np.inf


def test_ray_casts_match_marching_along_the_rays(rng):
  d = rng.standard_normal((40, 3))
  d /= np.linalg.norm(d, axis=1, keepdims=True)
  box = (np.array([2.0, -1.0, -1.5]), np.array([4.0, 1.5, 0.5]), 0)
  cyl = (1.0, 2.0, 0.7, -1.0, 2.0, 0)
  sph = (np.array([-2.0, 1.0, 0.5]), 1.2, 0)
  tb = _lidar._ray_boxes(d, [box])[:, 0]
  tc = _lidar._ray_cylinders(d, [cyl])[:, 0]
  ts = _lidar._ray_spheres(d, [sph])[:, 0]
  assert np.isfinite(tb).sum() >= 2 and np.isfinite(tc).sum() >= 2 and np.isfinite(ts).sum() >= 2
  for i in range(len(d)):
    want_b = _march(d[i], lambda p: np.all((p >= box[0]) & (p <= box[1]), axis=1))
    want_c = _march(d[i], lambda p: ((p[:, 0] - 1.0) ** 2 + (p[:, 1] - 2.0) ** 2 <= 0.49) & (p[:, 2] >= -1.0)
                    & (p[:, 2] <= 2.0))
    want_s = _march(d[i], lambda p: np.sum((p - sph[0]) ** 2, axis=1) <= 1.44)
    for got, want in ((tb[i], want_b), (ts[i], want_s)):
      assert (np.isinf(got) and np.isinf(want)) or abs(got - want) < 2e-3
    # the cylinder cast sees the side surface only: a ray entering through a cap is a miss there
    if np.isfinite(tc[i]):
      assert abs(tc[i] - want_c) < 2e-3


def test_synthetic_lidar_scan_looks_like_a_semantickitti_scan():
  scan = data.synthetic_lidar_scan(3, beams=32, azimuths=256, max_range=40.0)
  again = data.synthetic_lidar_scan(3, beams=32, azimuths=256, max_range=40.0)
  np.testing.assert_array_equal(scan["points"], again["points"])
  pts, labels = scan["points"], scan["labels"]
  assert pts.dtype == np.float32 and pts.shape[1] == 4 and labels.shape == (len(pts),)
  assert len(pts) <= 32 * 256
  assert np.linalg.norm(pts[:, :3], axis=1).max() < 40.0 + 0.2
  assert 0 <= pts[:, 3].min() and pts[:, 3].max() <= 1
  assert set(np.unique(labels)) <= set(range(len(CLASS_NAMES)))
  ground = np.isin(labels, [CLASS_NAMES.index(c) for c in ("road", "parking", "sidewalk", "terrain")])
  assert np.abs(pts[ground, 2] + _lidar.SENSOR_HEIGHT).max() < 0.15  # range noise only
  counts = np.bincount(labels, minlength=len(CLASS_NAMES))
  for name in ("road", "sidewalk", "car", "building"):
    assert counts[CLASS_NAMES.index(name)] > 0, name
  assert not np.array_equal(pts, data.synthetic_lidar_scan(4, beams=32, azimuths=256, max_range=40.0)["points"])
  with pytest.raises(ValueError, match="positive"):
    data.synthetic_lidar_scan(0, beams=0)


def test_scan_to_voxels_keeps_the_first_point_of_each_voxel(rng):
  pts = np.concatenate([rng.uniform(-2, 2, (300, 3)), rng.uniform(0, 1, (300, 1))], axis=1).astype(np.float32)
  labels = rng.integers(0, 19, 300).astype(np.int32)
  labels[::7] = 255
  ev = data.scan_to_voxels({"points": pts, "labels": labels}, voxel_size=0.5)
  first = {}
  for i, cell in enumerate(map(tuple, np.floor(pts[:, :3] / 0.5).astype(int))):
    first.setdefault(cell, i)
  assert len(ev["coords"]) == len(first)
  for row, cell in enumerate(map(tuple, ev["coords"])):
    i = first[cell]
    np.testing.assert_array_equal(ev["feats"][row], pts[i])
    assert ev["labels"][row] == labels[i]  # 255 stays: the losses and metrics take ignore_index=255
  np.testing.assert_array_equal(ev["coords"][ev["inverse"]], np.floor(pts[:, :3] / 0.5).astype(np.int32))


def test_collate_points_pads_and_keeps_ignored_labels(rng):
  events = [{"points": rng.standard_normal((n, 4)).astype(np.float32), "labels": rng.integers(0, 3, n)}
            for n in (5, 9)]
  events[1]["labels"][2] = 255
  (xyz, batch, feats), labels = data.collate_points(events, voxel_size=0.5, capacity=16)
  assert xyz.shape == (16, 3) and batch.shape == (16,) and feats.shape == (16, 4) and labels.shape == (16,)
  np.testing.assert_allclose(xyz[:5], events[0]["points"][:, :3] / 0.5)
  np.testing.assert_array_equal(feats[5:14], events[1]["points"])
  np.testing.assert_array_equal(batch, [0] * 5 + [1] * 9 + [-1] * 2)
  assert labels[5 + 2] == 255 and (labels[14:] == -1).all() and (xyz[14:] == 0).all()
  with pytest.raises(ValueError, match="cannot hold"):
    data.collate_points(events, voxel_size=0.5, capacity=8)
  loader = data.Loader(events * 2, 2, devices=2, collate_fn=data.collate_points, voxel_size=0.5, prefetch=0,
                       num_steps=1, shuffle=False)
  (xyz2, batch2, _), labels2 = next(iter(loader))
  assert xyz2.shape[0] == 2 and xyz2.shape[1] == batch2.shape[1] >= 9  # one capacity for both devices
  np.testing.assert_array_equal(batch2[1, :9], 0)


def test_synthetic_part_shapes_have_the_shapenet_layout():
  assert _shapes.NUM_PARTS == 50 and len(_shapes.CATEGORIES) == 16
  for seed in range(12):
    ev = data.synthetic_part_shape(seed, num_points=512)
    pts, labels, c = ev["points"], ev["labels"], ev["shape"]
    assert pts.shape == (512, 6) and labels.shape == (512,)
    assert np.linalg.norm(pts[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(pts[:, :3].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pts[:, 3:], axis=1), 1, atol=1e-5)
    lo = _shapes.PART_OFFSETS[c]
    assert lo <= labels.min() and labels.max() < lo + _shapes.PARTS_PER_CATEGORY[c]
  np.testing.assert_array_equal(data.synthetic_part_shape(5)["points"], data.synthetic_part_shape(5)["points"])
  (points, one_hot), labels = data.collate_shapes([data.synthetic_part_shape(s, num_points=64) for s in range(3)])
  assert points.shape == (3, 64, 6) and labels.shape == (3, 64) and one_hot.sum() == 3
  with pytest.raises(ValueError, match="different point counts"):
    data.collate_shapes([data.synthetic_part_shape(0, num_points=64), data.synthetic_part_shape(1, num_points=32)])


def _write_release(root, rng):
  (root / "train_test_split").mkdir(parents=True)
  (root / "synsetoffset2category.txt").write_text("Bag\t02773838\nMug\t03797390\n")
  entries = []
  for synset, c in (("02773838", 1), ("03797390", 11)):
    (root / synset).mkdir()
    for m in range(2):
      n = 40 + 30 * m
      rows = np.concatenate([rng.standard_normal((n, 6)), _shapes.PART_OFFSETS[c] + rng.integers(0, 2, (n, 1))], 1)
      np.savetxt(root / synset / f"model{m}.txt", rows)
      entries.append(f"shape_data/{synset}/model{m}")
  (root / "train_test_split" / "shuffled_train_file_list.json").write_text(json.dumps(entries))


def test_shapenet_part_reader(tmp_path, rng):
  _write_release(tmp_path, rng)
  ds = data.ShapeNetPart(tmp_path, "train", num_points=50)
  assert len(ds) == 4
  ev = ds[2]
  assert ev["shape"] == 11 and ev["points"].shape == (50, 6)
  rows = np.loadtxt(tmp_path / "03797390" / "model0.txt")  # 40 rows: resampled with replacement to 50
  picked = {tuple(np.round(r, 4)) for r in ev["points"]}
  assert picked <= {tuple(np.round(r, 4)) for r in rows[:, :6].astype(np.float32)}
  np.testing.assert_array_equal(ds[2]["points"], ev["points"])  # an index always gives the same points
  assert set(np.unique(ds[0]["labels"])) <= {4, 5}
  with pytest.raises(FileNotFoundError, match="val"):
    data.ShapeNetPart(tmp_path, "val")
  with pytest.raises(FileNotFoundError, match="synsetoffset2category"):
    data.ShapeNetPart(tmp_path / "nowhere")
  bad = np.loadtxt(tmp_path / "02773838" / "model0.txt")
  bad[0, 6] = 30
  np.savetxt(tmp_path / "02773838" / "model0.txt", bad)
  with pytest.raises(ValueError, match="outside Bag's parts"):
    ds[0]


def test_lidar_augmentation_is_a_seeded_similarity_transform():
  scan = data.synthetic_lidar_scan(0, beams=16, azimuths=64)
  a = data.augment_lidar(scan, np.random.default_rng([3, 0, 7]), flip=True, jitter=0.0)
  b = data.augment_lidar(scan, np.random.default_rng([3, 0, 7]), flip=True, jitter=0.0)
  np.testing.assert_array_equal(a["points"], b["points"])  # the same (seed, epoch, index): the same scan
  np.testing.assert_array_equal(a["labels"], scan["labels"])
  np.testing.assert_array_equal(a["points"][:, 3], scan["points"][:, 3])  # remission untouched
  p, q = scan["points"][:, :3].astype(np.float64), a["points"][:, :3].astype(np.float64)
  # a rotation about z, mirrors and one scale: pairwise distances scale by one factor, heights by the same one
  d_p = np.linalg.norm(p[1:] - p[:-1], axis=1)
  d_q = np.linalg.norm(q[1:] - q[:-1], axis=1)
  factor = np.median(d_q / d_p)
  assert 0.95 <= factor <= 1.05
  np.testing.assert_allclose(d_q, factor * d_p, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(q[:, 2], factor * p[:, 2], rtol=1e-5, atol=1e-5)
  assert not np.allclose(q[:, :2], factor * p[:, :2], atol=1e-3)  # it did rotate
  jittered = data.augment_lidar(scan, np.random.default_rng(0), rotate=False, scale=None, jitter=0.01)
  assert 0.007 < np.std(jittered["points"][:, :3] - scan["points"][:, :3]) < 0.013
  with pytest.raises(ValueError, match="scale must be"):
    data.augment_lidar(scan, np.random.default_rng(0), scale=(1.1, 0.9))


def test_voxel_events_collate_with_every_point_pointing_at_its_voxel(rng):
  scans = [data.synthetic_lidar_scan(s, beams=16, azimuths=64) for s in (0, 1)]
  events = [data.scan_to_voxels(s, voxel_size=0.2) for s in scans]
  (x, rows), labels = data.collate_voxel_points(events, point_capacity=4096)
  n = sum(len(s["points"]) for s in scans)
  assert rows.shape == labels.shape == (4096,) and (rows[n:] == -1).all() and (labels[n:] == -1).all()
  coords = np.asarray(x.coords)[rows[:n]]
  want = np.concatenate([np.c_[np.full(len(s["points"]), b), np.floor(s["points"][:, :3] / 0.2)]
                         for b, s in enumerate(scans)]).astype(np.int32)
  np.testing.assert_array_equal(coords, want)  # each point's row holds its own voxel
  np.testing.assert_array_equal(labels[:n], np.concatenate([s["labels"] for s in scans]))
  logits = np.asarray(rng.standard_normal((x.capacity, 3)), np.float32)

  class Voxelwise:  # a stand-in model: fixed per-voxel logits
    def __call__(self, x):
      return x.replace(feats=jnp.asarray(logits))

  per_point, events_of = training.voxel_point_logits(Voxelwise(), (x, jnp.asarray(rows)))
  np.testing.assert_array_equal(np.asarray(per_point)[:n], logits[rows[:n]])
  np.testing.assert_array_equal(np.asarray(events_of)[:n], want[:, 0])
  assert (np.asarray(events_of)[n:] == -1).all()
  with pytest.raises(ValueError, match="cannot hold"):
    data.collate_voxel_points(events, point_capacity=n - 1)
  loader = data.Loader(events, 2, devices=2, collate_fn=data.collate_voxel_points, level_strides=(2,), prefetch=0,
                       num_steps=1, shuffle=False)
  (xs, rows2), labels2 = next(iter(loader))  # device shares of one capacity, one plan and one point capacity
  assert xs.coords.shape[0] == rows2.shape[0] == labels2.shape[0] == 2
