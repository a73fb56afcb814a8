"""PILArNet-M files: written and read back exactly, the papers' options, and bad files with clear errors."""

import h5py
import numpy as np
import pytest

from jsparse3d import data
from jsparse3d import training


def _sorted(coords, *arrays):
  order = np.lexsort(coords.T[::-1])
  return (coords[order], *(a[order] for a in arrays))


@pytest.mark.parametrize("version", [1, 2])
def test_written_synthetic_events_read_back_as_the_generator_made_them(tmp_path, version):
  path = data.write_pilarnet(tmp_path / "gen.h5", [data.synthetic_pilarnet_event(s, version=version)
                                                    for s in range(3)])
  ds = data.PILArNetM(path)
  assert ds.version == version and len(ds) == 3 and ds.skipped == 0
  for s in range(3):
    want = data.synthetic_lartpc_event(s, scheme="larcv5")
    got = ds[s]
    w = _sorted(want["coords"], want["energy"], want["labels"])
    g = _sorted(got["coords"], got["energy"], got["labels"])
    for a, b in zip(g, w):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got["motif"], got["labels"])
    if version == 2:  # the stand-in particle ids follow the class, -1 (scatters) read as 5
      np.testing.assert_array_equal(got["pid"], np.array([0, 2, 1, 1, 5])[got["motif"]])
  if version == 1:
    with pytest.raises(ValueError, match="v2 only"):
      data.PILArNetM(path, labels="pid")


def test_the_papers_options_and_merged_voxels(tmp_path):
  # Two clusters: scatters (2 points) then a track (3 points) whose first point shares a voxel with a scatter.
  point = np.zeros((5, 8), np.float32)
  point[:, :3] = [[1.2, 1.2, 1.2], [5.5, 5.5, 5.5], [1.7, 1.9, 1.1], [2.5, 1.5, 1.5], [3.5, 1.5, 1.5]]
  point[:, 3] = [0.1, 0.05, 0.9, 0.12, 2.0]
  point[:, 4:] = 7.0  # the unnamed columns come through as they are
  cluster = np.array([[2, 0, 0, -1, 4, -1], [3, 1, 1, 0, 1, 2]])
  extra = np.array([[0, 0, 0, 0, 0], [0, 250.0, 10, 20, 30]], np.float32)
  event = {"point": point.ravel(), "cluster": cluster.ravel(), "cluster_extra": extra.ravel()}
  small = {"point": point[:2].ravel(), "cluster": np.array([2, 0, 0, -1, 4, -1]), "cluster_extra": extra[:1].ravel()}
  path = data.write_pilarnet(tmp_path / "e.h5", [event, small])
  ds = data.PILArNetM(path)
  ev = ds[0]
  assert len(ev["energy"]) == 4  # voxel (1, 1, 1) holds two points
  merged = np.flatnonzero(np.all(ev["coords"] == 1, axis=1))[0]
  assert ev["energy"][merged] == pytest.approx(1.0) and ev["motif"][merged] == 1 and ev["cluster"][merged] == 1
  assert ev["pid"][merged] == 2 and ev["momentum"][merged] == 250.0 and ev["vertex"][merged].tolist() == [10, 20, 30]
  pts = ds.points(0)
  assert len(pts["xyz"]) == 5 and np.all(pts["point_extra"] == 7.0) and pts["pid"][0] == 5
  cut = data.PILArNetM(path, energy_threshold=0.13, remove_low_energy_scatters=True)
  assert cut.points(0)["energy"].tolist() == pytest.approx([0.9, 2.0])
  assert len(data.PILArNetM(path, min_points=3)) == 1 and data.PILArNetM(path, min_points=3).skipped == 1


def test_bad_pilarnet_files_say_what_is_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.PILArNetM(tmp_path / "none.h5")
  ev = data.synthetic_pilarnet_event(0)
  bad = dict(ev, cluster=ev["cluster"].reshape(-1, 6) * np.array([2, 1, 1, 1, 1, 1]))
  with pytest.raises(ValueError, match="counts"):
    data.write_pilarnet(tmp_path / "x.h5", [bad])
  path = tmp_path / "raw.h5"
  point = np.zeros(5 * 8, np.float32)
  with h5py.File(path, "w") as f:  # written by hand, as a truncated or foreign file would be
    f.create_dataset("point", (1,), dtype=h5py.vlen_dtype(np.float32))[0] = point
    f.create_dataset("cluster", (1,), dtype=h5py.vlen_dtype(np.int64))[0] = np.array([2, 0, 0, -1, 4, 2, 1, 1, 0, 1])
  with pytest.raises(ValueError, match="counts 4 points but the event holds 5"):  # v1: two clusters of 5 columns
    data.PILArNetM(path)[0]
  with h5py.File(path, "a") as f:  # now v2, whose clusters have 6 columns: 10 values cannot be a table
    f.create_dataset("cluster_extra", (1,), dtype=h5py.vlen_dtype(np.float32))[0] = np.zeros(10, np.float32)
  with pytest.raises(ValueError, match="multiple of the 6 columns"):
    data.PILArNetM(path)[0]
  with h5py.File(path, "a") as f:
    del f["point"]
    f.create_dataset("point", (2,), dtype=h5py.vlen_dtype(np.float32))
  with pytest.raises(ValueError, match="2 point entries but 1 cluster entries"):
    data.PILArNetM(path)
  with h5py.File(path, "a") as f:
    del f["point"]
  with pytest.raises(ValueError, match=r"no \['point'\] dataset"):
    data.PILArNetM(path)


def test_precision_recall_and_f1_from_the_confusion_counts():
  cm = training.ConfusionMatrix(3)
  cm.counts[:] = [[8, 2, 0], [1, 3, 0], [0, 0, 0]]
  assert cm.precision() == [pytest.approx(8 / 9), pytest.approx(3 / 5), None]
  assert cm.recall() == [pytest.approx(8 / 10), pytest.approx(3 / 4), None]
  f1 = [2 * p * r / (p + r) for p, r in ((8 / 9, 8 / 10), (3 / 5, 3 / 4))]
  assert cm.f1() == [pytest.approx(f1[0]), pytest.approx(f1[1]), None]
  assert cm.mean_f1() == pytest.approx(np.mean(f1))


def test_the_pilarnet_smoke_configs_train_on_written_synthetic_files(tmp_path):
  from train import configs
  from train import tasks
  from train import train_lib
  cfg = configs.get_config("uresnet_pilarnet_smoke", ["steps=2", "eval_every=2", "checkpoint_every=2"])
  result = train_lib.train(cfg, tmp_path, progress=False)
  assert result["step"] == 2 and result["test"]["counted"] > 0
  rec = result["test"]
  assert len(rec["per_class_f1"]) == 5 and 0 <= rec["mean_f1"] <= 1 and len(rec["per_class_precision"]) == 5
  pid = tasks.build_task(configs.get_config("uresnet_pilarnet_pid_smoke"))
  assert pid.class_names == data.PILARNET_PID_NAMES and set(np.unique(pid.train_set[0]["labels"])) <= set(range(6))
  with pytest.raises(ValueError, match="data.train_path"):
    tasks.build_task(configs.get_config("uresnet_pilarnet"))  # the full config: no files, no synthetic events


def test_the_log_energy_feature_maps_0_to_20_mev_onto_minus_1_to_1():
  from jsparse3d.data import _pilarnet
  e = np.array([0.0, 0.13, 1.0, 20.0])
  want = 2 * (np.log10(e + 0.01) - np.log10(0.01)) / (np.log10(20.01) - np.log10(0.01)) - 1
  np.testing.assert_allclose(_pilarnet.log_energy(e), want, rtol=1e-6)
  assert _pilarnet.log_energy(0.0) == pytest.approx(-1) and _pilarnet.log_energy(20.0) == pytest.approx(1)


def test_michel_challenge_files_read_back_as_the_generator_made_them(tmp_path):
  events = [data.synthetic_michel_event(s, size=64) for s in range(3)]
  ds = data.MichelChallenge(data.write_michel_challenge(tmp_path / "m.h5", events))
  assert len(ds) == 3 and ds.class_names == data.PILARNET_MOTIF_NAMES
  for s in range(3):
    want = data.synthetic_lartpc_event(s, size=64, scheme="larcv5")
    got = ds[s]
    for a, b in zip(_sorted(got["coords"], got["energy"], got["labels"]),
                    _sorted(want["coords"], want["energy"], want["labels"])):
      np.testing.assert_array_equal(a, b)
  # One event per file as plain arrays; points sharing a voxel merge; the threshold and min_points options.
  xyze = np.array([[1.2, 1.2, 1.2, 0.1], [1.7, 1.9, 1.1, 0.9], [3.5, 1.5, 1.5, 2.0]], np.float32)
  with h5py.File(tmp_path / "one.h5", "w") as f:
    f["xyze"], f["label"] = xyze, np.array([4, 2, 1], np.int32)
  ev = data.MichelChallenge(tmp_path / "one.h5")[0]
  merged = np.flatnonzero(np.all(ev["coords"] == 1, axis=1))[0]
  assert len(ev["labels"]) == 2 and ev["energy"][merged] == pytest.approx(1.0) and ev["labels"][merged] == 2
  assert data.MichelChallenge(tmp_path / "one.h5", energy_threshold=0.13).points(0)["labels"].tolist() == [2, 1]
  skipping = data.MichelChallenge(tmp_path / "one.h5", min_points=4)
  assert len(skipping) == 0 and skipping.skipped == 1


def test_bad_michel_challenge_files_say_what_is_wrong(tmp_path):
  with h5py.File(tmp_path / "none.h5", "w") as f:
    f["points"] = np.zeros((3, 4), np.float32)
  with pytest.raises(ValueError, match=r"no \['xyze', 'label'\] dataset.*holds \['points'\]"):
    data.MichelChallenge(tmp_path / "none.h5")
  with h5py.File(tmp_path / "shape.h5", "w") as f:
    f["xyze"], f["label"] = np.zeros((3, 3), np.float32), np.zeros(3, np.int32)
  with pytest.raises(ValueError, match=r"xyze is \(3, 3\).*expected"):
    data.MichelChallenge(tmp_path / "shape.h5")
  ev = data.synthetic_michel_event(0, size=64)
  path = data.write_michel_challenge(tmp_path / "short.h5", [ev])
  with h5py.File(path, "a") as f:
    f["label"][0] = ev["label"][:-1]
  with pytest.raises(ValueError, match="inconsistent"):
    data.MichelChallenge(path)[0]
  path = data.write_michel_challenge(tmp_path / "classes.h5", [ev])
  with pytest.raises(ValueError, match="outside the 2 classes.*class_names="):
    data.MichelChallenge(path, class_names=("other", "Michel"))[0]
  with pytest.raises(ValueError, match=r"xyze must be \[N, 4\]"):
    data.write_michel_challenge(tmp_path / "x.h5", [{"xyze": ev["xyze"][:, :3], "label": ev["label"]}])


def test_the_trainer_reads_michel_challenge_files(tmp_path):
  from train import configs
  from train import tasks
  paths = {split: data.write_michel_challenge(tmp_path / f"{split}.h5", [
      data.synthetic_michel_event((seed, i), size=64) for i in range(3)]) for split, seed in (("train", 0), ("val", 1))}
  cfg = configs.get_config("uresnet_pilarnet_smoke", ["data.kind=michel", f"data.train_path={paths['train']}",
                                                      f"data.eval_path={paths['val']}", "data.test_path="])
  task = tasks.build_task(cfg)
  assert task.class_names == data.PILARNET_MOTIF_NAMES and len(task.train_set) == 3 and task.test_set is None
  batch = task.collate_fn([task.train_set[0], task.train_set[1]], **task.collate_kwargs)
  assert int(batch[0].num_valid) == len(task.train_set[0]["labels"]) + len(task.train_set[1]["labels"])


def test_label_and_feature_statistics_of_written_synthetic_files(tmp_path):
  # The papers' voxel mix is 36.8 / 38.9 / 0.65 / 1.76 / 21.9 % (shower, track, Michel, delta, scatters); the
  # generator's differs (fewer scatters) but keeps its order of magnitude: two big classes, two rare ones.
  path = data.write_pilarnet(tmp_path / "s.h5", [data.synthetic_pilarnet_event(s) for s in range(40)])
  ds = data.PILArNetM(path, energy_threshold=0.13)
  events = [ds[i] for i in range(len(ds))]
  labels = np.concatenate([e["labels"] for e in events])
  share = np.bincount(labels, minlength=5) / len(labels)
  assert share[0] > 0.2 and share[1] > 0.2 and 0 < share[2] < 0.03 and 0 < share[3] < 0.06 and share[4] > 0.02
  assert 1000 < len(labels) / len(events) < 5000
  for e in events:
    assert e["energy"].min() > 0.13 and -1 <= e["log_energy"].min() and e["log_energy"].max() <= 1
    np.testing.assert_array_equal(e["log_energy"], data._pilarnet.log_energy(e["energy"]))
    assert len(np.unique(e["coords"], axis=0)) == len(e["coords"])  # one row per voxel
