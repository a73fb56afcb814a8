"""The model-study scripts run end to end in their quick modes and write sane results and figures."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _quick(script: str, parts: str, tmp_path: Path):
  """Runs ``parts`` of a study script's quick mode into ``tmp_path``; returns its results and its figures' folder."""
  out, figs = tmp_path / "results.json", tmp_path / "figs"
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--parts", parts, "--out",
                         str(out), "--figures", str(figs), "--runs", str(tmp_path / "runs")], capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), figs


def _assert_pngs(figs: Path, names) -> None:
  for name in names:
    data = (figs / f"{name}.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, name


@pytest.mark.slow  # about 70 s on 2 cores
def test_uresnet_study_quick_costs(tmp_path):
  r, figs = _quick("uresnet_study.py", "scaling,voxels,batch2d", tmp_path)
  cfg = r["config"]
  timed = {(row["kind"], row["size"]): row for row in r["scaling"] if not row.get("compile_only")}
  assert set(timed) == {("sparse", s) for s in cfg["sparse"]} | {("dense", s) for s in cfg["dense"]}
  for row in timed.values():
    assert row["forward_ms"] > 0 and row["step_ms"] > 0 and row["peak_rss_mb"] > 100 and row["xla_mb"] > 0
    assert row["voxels"] > 0
  # The study's point: at the same image the dense network needs more memory and more time than the sparse one.
  size = cfg["dense"][0]
  assert timed["dense", size]["xla_mb"] > 3 * timed["sparse", size]["xla_mb"]
  assert timed["dense", size]["step_ms"] > 3 * timed["sparse", size]["step_ms"]
  computed = [row for row in r["scaling"] if row.get("compile_only")]
  assert [row["size"] for row in computed] == list(cfg["dense_compile_only"])
  assert all(row["xla_mb"] > timed["dense", size]["xla_mb"] and "step_ms" not in row for row in computed)
  v = r["voxels"]
  assert len(v["rows"]) == len(cfg["voxel_sizes"]) * cfg["voxel_events"]
  assert v["fit"]["ms_per_kvoxel"] == v["fit"]["ms_per_kvoxel"]  # not NaN
  b = {(row["kind"], row["batch"], bool(row.get("compile_only"))): row for row in r["batch2d"]}
  full, small = cfg["batch2d"]["batch"], cfg["batch2d"]["timed_batch"]
  assert set(b) == {("sparse", full, False), ("dense", full, True), ("sparse", small, False), ("dense", small, False)}
  assert b["dense", full, True]["xla_mb"] > b["sparse", full, False]["xla_mb"]
  _assert_pngs(figs, ("uresnet_scaling_time", "uresnet_scaling_memory", "uresnet_time_vs_voxels"))


@pytest.mark.slow  # about 50 s on 2 cores
def test_uresnet_study_quick_time_to_accuracy(tmp_path):
  # Both networks trained the same steps, evaluated at the same steps, on the same held-out events.
  r, figs = _quick("uresnet_study.py", "accuracy", tmp_path)
  cfg, a = r["config"], r["accuracy"]
  steps = cfg["accuracy"]["steps"]
  for run in a["runs"]:
    assert [p["step"] for p in run["curve"]] == list(range(0, steps + 1, cfg["accuracy"]["eval_every"]))
    assert all(0 <= p["accuracy"] <= 1 for p in run["curve"]) and run["curve"][-1]["train_s"] > 0
    assert len(run["em_score"]) == steps and run["em_score_std_late"] >= 0
  assert a["summary"]["common_accuracy"] <= min(max(p["accuracy"] for p in run["curve"]) for run in a["runs"])
  _assert_pngs(figs, ("uresnet_learning_curves", "uresnet_em_scores"))


@pytest.mark.slow  # about 100 s on 2 cores
def test_uresnet_study_quick_classes(tmp_path):
  # Every variant trained by the trainer and scored on every test event; the study's own count of the test split
  # agrees with the trainer's report of it.
  r, figs = _quick("uresnet_study.py", "classes", tmp_path)
  c = r["classes"]
  assert list(c["variants"]) == ["cross_entropy", "sqrt_inverse_frequency", "focal_loss"]
  for name, v in c["variants"].items():
    assert v["events"] == 16 and sum(map(sum, v["confusion"])) == v["trainer_test"]["counted"], name
    assert abs(v["nonzero_accuracy"] - v["trainer_test"]["nonzero_accuracy"]) < 1e-3, name
  assert c["variants"]["sqrt_inverse_frequency"]["overrides"][0].startswith("class_weights=[")
  assert c["displays"]  # the 16 smoke test events hold Michel electrons, none labelled right after 6 steps
  _assert_pngs(figs, ("uresnet_confusion", "uresnet_michel_failures"))


@pytest.mark.slow  # about 2 minutes on 2 cores
def test_pvcnn_study_quick(tmp_path):
  r, figs = _quick("pvcnn_study.py", "throughput,accuracy", tmp_path)
  assert set(r["throughput"]) == set(r["config"]["networks"]) and set(r["accuracy"]) == set(r["config"]["trained"])
  for network, t in r["throughput"].items():
    assert t["inference_objects_per_s"] > t["training_objects_per_s"] > 0 and t["macs_per_object"] > 0, network
  for network, a in r["accuracy"].items():
    assert a["shapes"] == r["config"]["eval_shapes"] and 0 < a["instance_miou"] <= 1, network
    assert a["train_process_s"] > 0 and a["eval_curve"][-1]["step"] == r["config"]["steps"], network
  _assert_pngs(figs, ["pvcnn_vs_pointnet"])


@pytest.mark.slow  # about 80 s on 2 cores
def test_pvcnn_study_trains_and_scores_on_a_shapenet_part_release(tmp_path):
  # A miniature release in ShapeNet-part's layout: 2 categories x 2 objects, the same objects listed as the
  # training and the validation split.
  rng = np.random.default_rng(0)
  root = tmp_path / "shapenet"
  (root / "train_test_split").mkdir(parents=True)
  (root / "synsetoffset2category.txt").write_text("Bag\t02773838\nMug\t03797390\n")
  entries = []
  for synset, first_part in (("02773838", 4), ("03797390", 36)):  # Bag's parts are 4-5, Mug's 36-37
    (root / synset).mkdir()
    for m in range(2):
      rows = np.c_[rng.standard_normal((60, 6)), first_part + rng.integers(0, 2, 60)]
      np.savetxt(root / synset / f"model{m}.txt", rows)
      entries.append(f"shape_data/{synset}/model{m}")
  for split in ("train", "val"):
    (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
  out = tmp_path / "results.json"
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pvcnn_study.py"), "--quick", "--parts", "accuracy",
                         "--shapenet-root", str(root), "--out", str(out), "--figures", str(tmp_path / "figs"),
                         "--runs", str(tmp_path / "runs")], capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["config"]["data_root"] == str(root)
  for network, a in r["accuracy"].items():
    assert a["shapes"] == 4 and 0 < a["instance_miou"] <= 1, network  # the whole val split, not eval_shapes
    log = (tmp_path / "runs" / "shapenet_part" / f"{network.replace(' ', '_').replace('.', '')}.log").read_text()
    assert f"final: step {r['config']['steps']}" in log, network
