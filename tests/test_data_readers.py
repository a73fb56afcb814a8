"""larcv3 files (write, read, compare exactly; bad files) and SemanticKITTI scans."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from jsparse3d import data
from jsparse3d.data import _kitti

# The real scan's licence forbids redistributing it: point JSPARSE3D_KITTI_SAMPLE at a folder holding
# 000000.bin and 000000.label (sequence 00, frame 0); the tests that use it skip otherwise.
KITTI_SAMPLE = Path(os.environ.get("JSPARSE3D_KITTI_SAMPLE", Path(__file__).resolve().parents[2] / "shared" / "data"
                                   / "semantickitti-sample"))


# -- larcv3 -------------------------------------------------------------------------------------------------


def _events(n=4):
  events = []
  for seed in range(n):
    ev = data.synthetic_lartpc_event(seed)
    ev["cluster"] = np.where(ev["labels"] == 1, 0, np.where(ev["labels"] == 2, 1, -1)).astype(np.int32)
    ev["event_id"] = (7, seed // 2, 100 + seed)
    p = np.zeros(2, data._larcv3.PARTICLE)
    p["pdg_code"], p["energy_init"] = [13, 2212], [250.0 + seed, 80.0]
    ev["particles"] = p
    events.append(ev)
  return events


def test_larcv3_round_trip_is_exact(tmp_path):
  events = _events()
  path = data.write_larcv3(tmp_path / "events.h5", events, labels="semantics", cluster3d="pcluster",
                           particles="mctruth")
  ds = data.Larcv3Dataset(path, labels="semantics", cluster3d="pcluster", particles="mctruth")
  assert len(ds) == len(events)
  for i, ev in enumerate(events):
    got = ds[i]
    np.testing.assert_array_equal(got["coords"], ev["coords"])
    np.testing.assert_array_equal(got["energy"], ev["energy"])
    np.testing.assert_array_equal(got["labels"], ev["labels"])
    np.testing.assert_array_equal(got["cluster"], ev["cluster"])
    np.testing.assert_array_equal(got["particles"]["pdg_code"], [13, 2212])
    assert got["event_id"] == ev["event_id"]
    assert got["meta"]["number_of_voxels"] == (192, 192, 192)
    assert got["meta"]["image_sizes"] == pytest.approx((57.6,) * 3)
  assert ds[-1]["event_id"] == events[-1]["event_id"]
  with pytest.raises(IndexError):
    ds[len(events)]


def test_larcv3_layout_is_the_one_larcv_writes(tmp_path):
  path = data.write_larcv3(tmp_path / "e.h5", _events(2), cluster3d="pcluster")
  with h5py.File(path) as f:
    assert f["Events/event_id"].dtype.names == ("run", "subrun", "event")
    g = f["Data/sparse3d_data_group"]
    assert set(g) == {"extents", "voxel_extents", "image_meta", "voxels"}
    assert g["voxels"].dtype.names == ("id", "value") and g["voxel_extents"].dtype.names == ("first", "N", "ID")
    assert set(f["Data/cluster3d_pcluster_group"]) == {"extents", "projection_extents", "image_meta",
                                                       "cluster_extents", "voxels"}
    # Voxel ids are C order over number_of_voxels: id = (x * ny + y) * nz + z.
    ev = _events(1)[0]
    c = ev["coords"].astype(np.int64)
    first, n = g["voxel_extents"][0]["first"], g["voxel_extents"][0]["N"]
    np.testing.assert_array_equal(g["voxels"][first:first + n]["id"], (c[:, 0] * 192 + c[:, 1]) * 192 + c[:, 2])


def test_larcv3_reader_explains_bad_files(tmp_path):
  path = data.write_larcv3(tmp_path / "e.h5", _events(2))
  with pytest.raises(KeyError, match="sparse3d_data"):
    data.Larcv3Dataset(path, sparse3d="missing")
  with pytest.raises(FileNotFoundError):
    data.Larcv3Dataset(tmp_path / "nope.h5")
  # A truncated voxels table.
  cut = tmp_path / "cut.h5"
  cut.write_bytes(path.read_bytes())
  with h5py.File(cut, "a") as f:
    f["Data/sparse3d_data_group/voxels"].resize((10,))
  with pytest.raises(ValueError, match="truncated"):
    data.Larcv3Dataset(cut)[1]
  # A meta too small for the voxel ids.
  bad = tmp_path / "meta.h5"
  bad.write_bytes(path.read_bytes())
  with h5py.File(bad, "a") as f:
    meta = f["Data/sparse3d_data_group/image_meta"][...]
    meta["number_of_voxels"] = 16
    f["Data/sparse3d_data_group/image_meta"][...] = meta
  with pytest.raises(ValueError, match="meta is wrong"):
    data.Larcv3Dataset(bad)[0]
  # Labels that do not cover the input voxels.
  events = _events(1)
  partial = dict(events[0])
  write_path = data.write_larcv3(tmp_path / "p.h5", [partial], labels=None)
  with h5py.File(write_path, "a") as f:
    g = f.create_group("Data/sparse3d_semantics_group")
    for name in ("extents", "voxel_extents", "image_meta", "voxels"):
      src = f[f"Data/sparse3d_data_group/{name}"][...]
      g.create_dataset(name, data=src[:5] if name == "voxels" else src)
    ext = g["voxel_extents"][...]
    ext["N"] = 5
    g["voxel_extents"][...] = ext
  with pytest.raises(ValueError, match="no label"):
    data.Larcv3Dataset(write_path, labels="semantics")[0]
  with pytest.raises(ValueError, match="outside"):
    data.write_larcv3(tmp_path / "x.h5", [{"coords": np.array([[200, 0, 0]]), "energy": np.ones(1)}])


def test_larcv3_cross_check_with_the_larcv_package(tmp_path):
  """Runs only where the optional larcv (larcv3) package is installed: each side reads the other's file."""
  larcv = pytest.importorskip("larcv")
  events = _events(2)
  ours = data.write_larcv3(tmp_path / "ours.h5", events, labels=None, sparse3d="test")
  io = larcv.IOManager(larcv.IOManager.kREAD)
  io.add_in_file(str(ours))
  io.initialize()
  assert io.get_n_entries() == len(events)
  for i, ev in enumerate(events):
    io.read_entry(i)
    voxels = io.get_data("sparse3d", "test").sparse_tensor(0).as_vector()
    ids = np.array([voxels[j].id() for j in range(voxels.size())])
    values = np.array([voxels[j].value() for j in range(voxels.size())], np.float32)
    c = ev["coords"].astype(np.int64)
    np.testing.assert_array_equal(np.sort(ids), (c[:, 0] * 192 + c[:, 1]) * 192 + c[:, 2])
    np.testing.assert_allclose(np.sort(values), np.sort(ev["energy"]))
  io.finalize()
  theirs = str(tmp_path / "theirs.h5")
  io = larcv.IOManager(larcv.IOManager.kWRITE)
  io.set_out_file(theirs)
  io.initialize()
  meta = larcv.ImageMeta3D()
  for axis in range(3):
    meta.set_dimension(axis, 57.6, 192)
  for i, ev in enumerate(events):
    io.set_id(1, 0, i)
    vs = larcv.VoxelSet()
    c = ev["coords"].astype(np.int64)
    for vid, value in zip((c[:, 0] * 192 + c[:, 1]) * 192 + c[:, 2], ev["energy"]):
      vs.emplace(int(vid), float(value), False)
    io.get_data("sparse3d", "test").set(vs, meta)
    io.save_entry()
  io.finalize()
  ds = data.Larcv3Dataset(theirs, sparse3d="test")
  for i, ev in enumerate(events):
    np.testing.assert_array_equal(ds[i]["coords"], ev["coords"])
    np.testing.assert_allclose(ds[i]["energy"], ev["energy"])
    assert ds[i]["event_id"] == (1, 0, i)


# -- SemanticKITTI ------------------------------------------------------------------------------------------


def test_learning_maps():
  official, spvnas = data.learning_map("official"), data.learning_map("spvnas")
  assert official[10] == 1 and official[252] == 1 and official[81] == 19 and official[0] == 0
  assert official[13] == 5 and official[60] == 9  # bus -> other-vehicle, lane-marking -> road
  assert spvnas[10] == 0 and spvnas[252] == 0 and spvnas[81] == 18 and spvnas[0] == 255
  assert spvnas[13] == 255 and spvnas[60] == 255 and spvnas[257] == 255
  # Where SPVNAS keeps a class, it is the official class minus one.
  kept = (spvnas >= 0) & (spvnas != 255)
  np.testing.assert_array_equal(spvnas[kept], official[kept] - 1)
  assert sorted(set(official[official >= 0])) == list(range(20))
  assert sorted(set(spvnas[kept])) == list(range(19))
  with pytest.raises(ValueError, match="official"):
    data.learning_map("nuscenes")


def _write_scan(tmp_path, points, raw_labels, name="000000"):
  b, l = tmp_path / f"{name}.bin", tmp_path / f"{name}.label"
  np.asarray(points, np.float32).tofile(b)
  np.asarray(raw_labels, np.uint32).tofile(l)
  return b, l


def test_read_semantickitti_maps_and_validates(tmp_path):
  rng = np.random.default_rng(0)
  raw = np.array(sorted(_kitti._RAW), np.uint32)
  pts = rng.standard_normal((len(raw), 4)).astype(np.float32)
  instance = np.arange(len(raw), dtype=np.uint32)
  b, l = _write_scan(tmp_path, pts, raw | (instance << 16))
  scan = data.read_semantickitti(b, l)
  np.testing.assert_array_equal(scan["points"], pts)
  np.testing.assert_array_equal(scan["labels"], data.learning_map("official")[raw])
  np.testing.assert_array_equal(scan["instances"], instance)
  np.testing.assert_array_equal(data.read_semantickitti(b, l, label_map="spvnas")["labels"],
                                data.learning_map("spvnas")[raw])
  assert (data.read_semantickitti(b)["labels"] == 0).all()
  # Wrong sizes, NaN coordinates, unknown classes.
  short = tmp_path / "short.bin"
  short.write_bytes(b.read_bytes()[:-4])
  with pytest.raises(ValueError, match="16 bytes"):
    data.read_semantickitti(short)
  b2, l2 = _write_scan(tmp_path, pts[:-1], raw[:-1], "count")
  with pytest.raises(ValueError, match="must match"):
    data.read_semantickitti(b2, l)
  nan = pts.copy()
  nan[3, 1] = np.nan
  b3, _ = _write_scan(tmp_path, nan, raw, "nan")
  with pytest.raises(ValueError, match="NaN"):
    data.read_semantickitti(b3)
  b4, l4 = _write_scan(tmp_path, pts, np.where(raw == 10, 42, raw), "unknown")
  with pytest.raises(ValueError, match="42"):
    data.read_semantickitti(b4, l4)


def test_sequence_layout(tmp_path):
  rng = np.random.default_rng(1)
  for seq, frames in (("00", 2), ("08", 1)):
    (tmp_path / "sequences" / seq / "velodyne").mkdir(parents=True)
    (tmp_path / "sequences" / seq / "labels").mkdir()
    for f in range(frames):
      pts = rng.standard_normal((5, 4)).astype(np.float32)
      pts.tofile(tmp_path / "sequences" / seq / "velodyne" / f"{f:06d}.bin")
      np.full(5, 40, np.uint32).tofile(tmp_path / "sequences" / seq / "labels" / f"{f:06d}.label")
  ds = data.SemanticKittiDataset(tmp_path, sequences=("00", "08"))
  assert len(ds) == 3 and ds[2]["sequence"] == "08" and ds[1]["frame"] == "000001"
  assert (ds[0]["labels"] == 9).all()
  assert len(data.SemanticKittiDataset(tmp_path, "val")) == 1
  with pytest.raises(FileNotFoundError, match="sequence 01"):
    data.SemanticKittiDataset(tmp_path, "train")
  # Regression: a missing .label file gave an all-unlabelled scan without a word.
  (tmp_path / "sequences" / "08" / "labels" / "000000.label").unlink()
  with pytest.raises(FileNotFoundError, match="000000.label does not exist.*unlabelled=True"):
    data.SemanticKittiDataset(tmp_path, "val")[0]
  unlabelled = data.SemanticKittiDataset(tmp_path, "val", label_map="spvnas", unlabelled=True)
  assert unlabelled.ignore_index == 255 and (unlabelled[0]["labels"] == 255).all()
  assert data.SemanticKittiDataset(tmp_path, "val").ignore_index == 0 == data.ignore_index("official")


def test_real_scan_trains_with_the_spvnas_ignore_label():
  # Regression: the spvnas map's 255 made the loss NaN.
  if not (KITTI_SAMPLE / "000000.bin").exists():
    pytest.skip(f"the SemanticKITTI sample is not at {KITTI_SAMPLE}; set JSPARSE3D_KITTI_SAMPLE to its folder")
  import jax.numpy as jnp

  from jsparse3d import training
  scan = data.read_semantickitti(KITTI_SAMPLE / "000000.bin", KITTI_SAMPLE / "000000.label", label_map="spvnas")
  ev = data.scan_to_voxels(scan, 0.05)
  labels = ev["labels"]
  assert (labels == 255).any() and labels[labels != 255].max() <= 18
  logits = jnp.asarray(np.random.default_rng(0).standard_normal((len(labels), 19)).astype(np.float32))
  events = jnp.zeros(len(labels), jnp.int32)
  loss = training.segmentation_loss(logits, jnp.asarray(labels), events, 1, ignore_index=data.ignore_index("spvnas"))
  assert np.isfinite(float(loss))
  cm = training.ConfusionMatrix(19).add(training.confusion_matrix(logits, jnp.asarray(labels), 19, ignore_index=255))
  assert cm.num_ignored == (labels == 255).sum() and cm.total + cm.num_ignored == len(labels)


def test_real_scan_voxelizes_to_the_usual_workload():
  if not (KITTI_SAMPLE / "000000.bin").exists():
    pytest.skip(f"the SemanticKITTI sample is not at {KITTI_SAMPLE}; set JSPARSE3D_KITTI_SAMPLE to its folder")
  scan = data.read_semantickitti(KITTI_SAMPLE / "000000.bin", KITTI_SAMPLE / "000000.label")
  assert scan["points"].shape == (123389, 4)
  assert scan["labels"].max() <= 19 and (scan["labels"] > 0).mean() > 0.9
  coords, inverse = data.voxelize(scan["points"], 0.05)
  assert 90_000 <= len(coords) <= 100_000
  np.testing.assert_array_equal(coords[inverse], np.floor(scan["points"][:, :3] / 0.05).astype(np.int32))
  with pytest.raises(ValueError, match="NaN"):
    data.voxelize(np.array([[np.nan, 0, 0]]))
