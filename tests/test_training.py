"""Losses and metrics against numpy; the trainer: loss goes down, exact resume, clear errors for bad setups."""

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import state_leaves
from flax import nnx

from jsparse3d import data
from jsparse3d import training
from train import configs
from train import train_lib


def test_segmentation_loss_matches_numpy(rng):
  logits = rng.standard_normal((30, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 30).astype(np.int32)
  labels[25:] = -1
  events = np.r_[np.zeros(10), np.ones(15), -np.ones(5)].astype(np.int32)
  logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  nll = -logp[np.arange(30), np.maximum(labels, 0)]
  want = np.mean([nll[:10].mean(), nll[10:25].mean()])  # per event, then over events
  got = training.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(events), 3)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  counts = np.bincount(labels[:25], minlength=4)
  w = np.where(counts > 0, 25 / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0)
  np.testing.assert_allclose(np.asarray(training.class_weights_inverse_frequency(jnp.asarray(labels), 4)), w,
                             rtol=1e-6)
  wl = w[np.maximum(labels, 0)]
  want_w = np.mean([(wl[:10] * nll[:10]).sum() / wl[:10].sum(), (wl[10:25] * nll[10:25]).sum() / wl[10:25].sum()])
  got_w = training.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(events), 3,
                                     class_weights="inverse_frequency")
  np.testing.assert_allclose(float(got_w), want_w, rtol=1e-5)


def test_focal_loss_matches_numpy(rng):
  logits = (3 * rng.standard_normal((30, 4))).astype(np.float32)
  labels = rng.integers(0, 4, 30).astype(np.int32)
  labels[26:] = -1
  events = np.r_[np.zeros(12), np.ones(14), -np.ones(4)].astype(np.int32)
  p = np.exp(logits.astype(np.float64))
  p /= p.sum(axis=1, keepdims=True)
  pt = p[np.arange(30), np.maximum(labels, 0)]
  args = (jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(events), 2)
  for gamma in (0.5, 2.0):
    fl = -((1 - pt) ** gamma) * np.log(pt)
    want = np.mean([fl[:12].mean(), fl[12:26].mean()])
    np.testing.assert_allclose(float(training.segmentation_loss(*args, focal_gamma=gamma)), want, rtol=1e-5)
    counts = np.bincount(labels[:26], minlength=4)
    w = np.where(counts > 0, 26 / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0)[np.maximum(labels, 0)]
    want_w = np.mean([(w[:12] * fl[:12]).sum() / w[:12].sum(), (w[12:26] * fl[12:26]).sum() / w[12:26].sum()])
    got_w = training.segmentation_loss(*args, focal_gamma=gamma, class_weights="inverse_frequency")
    np.testing.assert_allclose(float(got_w), want_w, rtol=1e-5)
  assert float(training.segmentation_loss(*args, focal_gamma=0.0)) == float(training.segmentation_loss(*args))
  # The gradient of the focal term against central differences in float64 numpy.
  def numpy_loss(z):
    q = np.exp(z - z.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    t = q[np.arange(30), np.maximum(labels, 0)]
    f = -((1 - t) ** 2) * np.log(t)
    return np.mean([f[:12].mean(), f[12:26].mean()])
  grad = np.asarray(jax.grad(lambda z: training.segmentation_loss(z, *args[1:], focal_gamma=2.0))(args[0]))
  z, eps = logits.astype(np.float64), 1e-5
  for i, j in [(0, 1), (5, 3), (20, 0), (27, 2)]:
    dz = np.zeros_like(z)
    dz[i, j] = eps
    assert grad[i, j] == pytest.approx((numpy_loss(z + dz) - numpy_loss(z - dz)) / (2 * eps), abs=1e-5)
  with pytest.raises(ValueError, match="focal_gamma must be >= 0"):
    training.segmentation_loss(*args, focal_gamma=-1.0)


def test_part_ious_follow_the_shapenet_protocol(rng):
  parts = (4, 2, 3)
  offsets = np.r_[0, np.cumsum(parts)]
  shapes = np.array([0, 1, 2, 2, 1])
  logits = rng.standard_normal((5, 40, 9)).astype(np.float32)
  labels = np.stack([rng.integers(offsets[c], offsets[c + 1], 40) for c in shapes])
  labels[2] = offsets[2]  # only one of its three parts present
  logits[2, :, offsets[2]] += 10  # and predicted everywhere: the two absent parts count as IoU 1
  want = []
  for b, c in enumerate(shapes):
    masked = np.full_like(logits[b], -np.inf)
    masked[:, offsets[c]:offsets[c + 1]] = logits[b, :, offsets[c]:offsets[c + 1]]
    pred = masked.argmax(axis=1)  # the best part of the object's own category
    cm = np.zeros((9, 9))
    np.add.at(cm, (labels[b], pred), 1)
    ious = [cm[p, p] / (cm[p].sum() + cm[:, p].sum() - cm[p, p]) if cm[p].sum() + cm[:, p].sum() else 1.0
            for p in range(offsets[c], offsets[c + 1])]
    want.append(np.mean(ious))
  got = training.part_ious(logits, labels, shapes, parts)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert got[2] == 1.0
  with pytest.raises(ValueError, match="labels outside its parts 4..5"):
    training.part_ious(logits, np.where(np.arange(5)[:, None] == 1, 0, labels), shapes, parts)
  with pytest.raises(ValueError, match="parts_per_shape sums to 8"):
    training.part_ious(logits, labels, shapes, (4, 2, 2))


def test_ignore_index_leaves_the_loss_finite_and_counts_ignored_rows(rng):
  # Regression: SemanticKITTI's ignore label 255 made the loss NaN and vanished from the confusion matrix.
  logits = rng.standard_normal((40, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 40).astype(np.int32)
  labels[[3, 9, 17, 30]] = 255
  labels[36:] = -1  # padding
  events = np.r_[np.zeros(20), np.ones(16), -np.ones(4)].astype(np.int32)
  as_padding = np.where(labels == 255, -1, labels)
  args = (jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(events), 2)
  for weights in (None, "inverse_frequency"):
    got = training.segmentation_loss(*args, class_weights=weights, ignore_index=255)
    want = training.segmentation_loss(jnp.asarray(logits), jnp.asarray(as_padding), jnp.asarray(events), 2,
                                      class_weights=weights)
    assert np.isfinite(float(got)) and float(got) == pytest.approx(float(want), rel=1e-6)
  with pytest.raises(ValueError, match=r"outside the 5 classes \(e.g. 255\); pass ignore_index=255"):
    training.segmentation_loss(*args)
  jitted = jax.jit(training.segmentation_loss, static_argnums=3)(*args)
  assert np.isnan(float(jitted))  # under jit: loud, never a silent drop
  cm = training.ConfusionMatrix(5).add(training.confusion_matrix(jnp.asarray(logits), jnp.asarray(labels), 5,
                                                                ignore_index=255))
  pred = logits.argmax(axis=1)
  counted = (labels >= 0) & (labels != 255)
  assert cm.total == counted.sum() and cm.num_ignored == 4
  np.testing.assert_array_equal(cm.ignored, np.bincount(pred[labels == 255], minlength=5))
  with pytest.raises(ValueError, match="outside the 5 classes"):
    training.confusion_matrix(jnp.asarray(logits), jnp.asarray(np.where(labels == 255, 7, labels)), 5,
                              ignore_index=255)
  with pytest.raises(ValueError, match=r"shape \[\.\.\., 6, 5\]"):
    cm.add(np.zeros((5, 5), np.int32))


def test_confusion_metrics_match_numpy(rng):
  logits = rng.standard_normal((200, 3)).astype(np.float32)
  labels = rng.integers(-1, 3, 200).astype(np.int32)
  cm = training.ConfusionMatrix(3)
  for part in np.array_split(np.arange(200), 3):  # accumulated across steps
    cm.add(training.confusion_matrix(jnp.asarray(logits[part]), jnp.asarray(labels[part]), 3))
  valid = labels >= 0
  pred = logits.argmax(axis=1)
  want = np.zeros((3, 3), np.int64)
  np.add.at(want, (labels[valid], pred[valid]), 1)
  np.testing.assert_array_equal(cm.counts, want)
  assert cm.counts.dtype == np.int64
  assert cm.nonzero_accuracy() == pytest.approx((pred[valid] == labels[valid]).mean())
  for c in range(3):
    assert cm.per_class_accuracy()[c] == pytest.approx((pred[valid & (labels == c)] == c).mean())
  tp = np.diag(want)
  assert cm.miou() == pytest.approx(np.mean(tp / (want.sum(0) + want.sum(1) - tp)))
  extended = np.concatenate([want, np.zeros((1, 3), np.int64)])  # confusion_matrix's ignored row
  cm.add(np.stack([extended, extended]))  # a leading device axis is summed
  np.testing.assert_array_equal(cm.counts, 3 * want)


def _smoke(**over):
  return configs.get_config("uresnet_lartpc_smoke", [f"{k}={v}" for k, v in over.items()])


def _max_float_difference(a: dict, b: dict) -> float:
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].dtype.kind == "f")


def test_pmap_on_four_devices_matches_one_device(tmp_path):
  """The same global batch of 4 events: one device, or one event on each of 4 devices (synced batch norm)."""
  cfg = _smoke(batch_size=4)
  one = train_lib.train(cfg, tmp_path / "one", progress=False, stop_after=2)
  four = train_lib.train(cfg, tmp_path / "four", progress=False, stop_after=2, devices=4)
  assert one["step"] == four["step"] == 2
  a, b = state_leaves(one["state"]), state_leaves(four["state"])
  assert _max_float_difference(a, b) < 2e-5  # parameters, optimizer moments and batch-norm statistics
  step_keys = [k for k in a if a[k].dtype.kind in "iu"]
  assert step_keys and all(np.array_equal(a[k], b[k]) for k in step_keys)
  with pytest.raises(ValueError, match="multiple of devices"):
    train_lib.train(_smoke(batch_size=2), tmp_path / "bad", progress=False, devices=4)
  with pytest.raises(ValueError, match="more than the 4 local"):
    train_lib.train(cfg, tmp_path / "bad", progress=False, devices=8)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # two fresh processes compile the step (minutes on 2 cores); run with -m slow
@pytest.mark.parametrize("name,extra,tolerance", [
    ("uresnet_lartpc_smoke", [], 2e-5),
    # The supernet: the processes must draw the subnets a single process draws. Without warm-up a step moves each
    # weight it reaches by about the learning rate (Adam), so another draw would show as 4e-3; Adam's division by
    # tiny second moments turns reduction-order rounding into up to 4e-4 (as on pmap devices in test_nas.py).
    ("uresnet_nas_lartpc_smoke", ["optimizer.warmup_steps=0"], 4e-4)])
def test_two_processes_train_together_and_agree(name, extra, tolerance, tmp_path):
  overrides = ["batch_size=4", "steps=2", "eval_every=2", "checkpoint_every=2", *extra]
  port, env = _free_port(), dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  worker = Path(__file__).with_name("distributed_worker.py")
  procs = [subprocess.Popen([sys.executable, str(worker), name, str(i), str(port), str(tmp_path / "dist"),
                             *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
  a, b = (dict(np.load(tmp_path / "dist" / f"state_{i}.npz")) for i in range(2))
  assert all(np.array_equal(a[k], b[k]) for k in a)  # the two processes hold the same state, bit for bit
  single = train_lib.train(configs.get_config(name, overrides), tmp_path / "single", progress=False)
  single = state_leaves(single["state"])
  assert all(np.array_equal(a[k], single[k]) for k in a if a[k].dtype.kind in "iu")  # steps, subnet draws
  assert _max_float_difference(a, single) < tolerance


def _tensorboard_scalars(folder: Path) -> dict:
  """Scalars of the TFRecord event files in ``folder``, decoded with TensorBoard's Event proto."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in folder.glob("events.out.tfevents.*"):
    raw = path.read_bytes()
    pos = 0
    while pos < len(raw):
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
      pos += 12 + length + 4  # length, its crc, the record, its crc
      for v in event.summary.value:
        out[(v.tag, event.step)] = v.simple_value
  return out


@pytest.mark.parametrize("name", ["uresnet_lartpc_smoke",
                                  # 30-60 s each on 2 cores; their models' steps are tested in test_models.py, and
                                  # MinkUNet through the trainer in test_minkunet_is_scored_per_point_on_its_scans
                                  pytest.param("minkunet_kitti_smoke", marks=pytest.mark.slow),
                                  pytest.param("spvcnn_kitti_smoke", marks=pytest.mark.slow),
                                  pytest.param("pvcnn_shapenet_smoke", marks=pytest.mark.slow),
                                  pytest.param("pointnet_shapenet_smoke", marks=pytest.mark.slow)])
def test_every_config_trains_on_its_synthetic_data(name, tmp_path):
  cfg = configs.get_config(name, ["steps=2", "log_every=1", "eval_every=2", "checkpoint_every=2"])
  result = train_lib.train(cfg, tmp_path, progress=False)
  assert result["step"] == 2 and np.isfinite(result["eval"]["loss"])
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  test = [("test", 2)] if name == "uresnet_lartpc_smoke" else []  # the configs with a test split
  assert [(r["split"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("eval", 2)] + test
  for r in records:
    assert {"split", "step", "loss", "nonzero_accuracy", "per_class_accuracy"} <= r.keys()
    assert len(r["per_class_accuracy"]) == cfg["model"]["num_classes"]
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  for r in records:
    assert scalars[(f"{r['split']}/loss", r["step"])] == pytest.approx(r["loss"], rel=1e-6)
    assert scalars[(f"{r['split']}/nonzero_accuracy", r["step"])] == pytest.approx(r["nonzero_accuracy"], rel=1e-6)
  assert (tmp_path / "confusion.png").exists()


@pytest.mark.slow  # minutes on 2 cores; run with -m slow
@pytest.mark.parametrize("name", ["uresnet_lartpc_smoke", "spvcnn_kitti_smoke"])  # SPVCNN: dropout RNG state
def test_kill_and_resume_gives_bitwise_identical_parameters(name, tmp_path):
  cfg = configs.get_config(name, ["steps=6", "eval_every=6", "checkpoint_every=6"])
  full = train_lib.train(cfg, tmp_path / "full", progress=False)
  part = train_lib.train(cfg, tmp_path / "split", progress=False, stop_after=2)
  assert part["step"] == 2
  resumed = train_lib.train(cfg, tmp_path / "split", progress=False)
  assert resumed["step"] == 6
  a, b = state_leaves(full["state"]), state_leaves(resumed["state"])
  assert a.keys() == b.keys()
  for k in a:  # parameters, optimizer state and step, batch-norm statistics, RNG streams
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert any(r["split"] == "eval" for r in records) and (tmp_path / "full" / "confusion.png").exists()
  if name.startswith("uresnet"):  # the smoke config's loss goes down within its 6 steps
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[-1] < train_losses[0]


@pytest.mark.slow  # the full-size models take minutes per step to compile and run on 2 cores
@pytest.mark.parametrize("name, overrides", [
    ("uresnet_lartpc", ["data.synthetic.eval_events=4"]),
    ("minkunet_kitti", ["data.kind=synthetic_lidar", "data.synthetic.eval_events=2"]),
    ("spvcnn_kitti", ["data.kind=synthetic_lidar", "data.synthetic.eval_events=2"]),
    ("pvcnn_shapenet", ["data.kind=synthetic_shapes", "data.synthetic.eval_events=8"]),
    ("pointnet_shapenet", ["data.kind=synthetic_shapes", "data.synthetic.eval_events=8"]),
])
def test_every_full_config_runs_a_step_on_synthetic_data(name, overrides, tmp_path):
  cfg = configs.get_config(name, overrides + ["steps=1", "eval_every=1", "checkpoint_every=1"])
  result = train_lib.train(cfg, tmp_path, progress=False)
  assert result["step"] == 1 and np.isfinite(result["eval"]["loss"])


def test_bad_configs_and_workdirs_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="unknown config"):
    configs.get_config("resnet_imagenet")
  with pytest.raises(ValueError, match="has no key"):
    configs.get_config("uresnet_lartpc", ["stepz=3"])
  with pytest.raises(ValueError, match="expected a int"):
    configs.get_config("uresnet_lartpc", ["steps=many"])
  with pytest.raises(ValueError, match="positive"):
    configs.get_config("uresnet_lartpc", ["batch_size=0"])
  with pytest.raises(ValueError, match="key=value"):
    configs.get_config("uresnet_lartpc", ["steps"])
  if os.geteuid() != 0:  # root can write anywhere
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="not writable"):
      train_lib.train(_smoke(), locked / "run", progress=False)
  cfg = _smoke(steps=2, eval_every=2, checkpoint_every=2)
  train_lib.train(cfg, tmp_path / "run", progress=False)
  other = _smoke(steps=2, eval_every=2, checkpoint_every=2, **{"model.filters": 8})
  with pytest.raises(ValueError, match="another model"):
    train_lib.train(other, tmp_path / "run", progress=False)
  with pytest.raises(FileNotFoundError, match="data.root"):
    train_lib.train(configs.get_config("minkunet_kitti", [f"data.root={tmp_path}/nowhere"]), tmp_path / "k")
  with pytest.raises(ValueError, match="needs data.train_path"):
    train_lib.train(_smoke(**{"data.kind": "larcv3"}), tmp_path / "l")
  with pytest.raises(ValueError, match="trains on data kinds"):
    train_lib.train(_smoke(**{"data.kind": "synthetic_lidar"}), tmp_path / "m")
  with pytest.raises(ValueError, match="num_classes is 7"):
    train_lib.train(_smoke(**{"model.num_classes": 7}), tmp_path / "n")
  with pytest.raises(ValueError, match="optimizer.kind"):
    configs.get_config("uresnet_lartpc", ["optimizer.kind=lamb"])
  with pytest.raises(ValueError, match=r"a list of 5 non-negative weights"):
    configs.get_config("uresnet_lartpc", ["class_weights=[1, 2, 3]"])
  with pytest.raises(ValueError, match=r"a list of 5 non-negative weights"):
    configs.get_config("uresnet_lartpc", ["class_weights=balanced"])
  assert configs.get_config("uresnet_lartpc", ["class_weights=[1, 1, 2, 4, 8.5]"])["class_weights"][-1] == 8.5
  with pytest.raises(ValueError, match="focal_gamma must be >= 0"):
    configs.get_config("uresnet_lartpc", ["focal_gamma=-2.0"])


def test_dropout_masks_differ_across_devices_but_the_state_stays_replicated():
  class Drop(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones((1, 64)))
      self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=3))

    def __call__(self, x):
      return self.drop(x * self.w[...])

  model = Drop()
  graphdef, state = nnx.split(model)
  replicated = jax.tree.map(lambda v: jnp.stack([v] * 2), state)

  def masks(state, x):
    m = nnx.merge(graphdef, training.per_device_keys(state, "d"))
    return m(x) != 0

  out = jax.pmap(masks, axis_name="d")(replicated, jnp.ones((2, 1, 64)))
  assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))  # independent masks per device
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  step = training.make_train_step(graphdef, num_classes=2, num_events=1, axis_name="d",
                                  forward=lambda m, x: (jnp.stack([m(x)[0], -m(x)[0]], 1), jnp.zeros(64, jnp.int32)))
  new, _, _ = step(jax.tree.map(lambda v: jnp.stack([v] * 2), state), jnp.ones((2, 1, 64)),
                   jnp.zeros((2, 64), jnp.int32))
  for leaf in jax.tree.leaves(jax.tree.map(lambda v: jax.random.key_data(v) if jax.dtypes.issubdtype(
      v.dtype, jax.dtypes.prng_key) else v, new)):
    np.testing.assert_array_equal(np.asarray(leaf[0]), np.asarray(leaf[1]))  # replicas agree after the step


def test_main_job_reports_a_test_split_never_used_for_choices():
  # Three disjoint synthetic splits: training, validation (evaluated during training) and a 500-event test set
  # evaluated once at the end; each from its own seed.
  cfg = configs.get_config("uresnet_lartpc")
  syn = cfg["data"]["synthetic"]
  assert len({syn["train_seed"], syn["eval_seed"], syn["test_seed"]}) == 3
  assert syn["test_events"] >= 500


def test_the_loop_runs_with_older_objects_frozen_and_returns_them_to_the_collector(tmp_path, monkeypatch):
  # gc.freeze for the loop: full collections no longer walk the model, the optimizer and jax's caches every few
  # dozen steps. The freeze must end with the loop, or every later train() call would stack another one.
  import gc
  frozen = []
  check = train_lib.check_targets
  record = lambda *a, **k: (frozen.append(gc.get_freeze_count()), check(*a, **k))
  monkeypatch.setattr(train_lib, "check_targets", record)
  train_lib.train(configs.get_config("uresnet_lartpc_smoke", ["steps=2", "eval_every=2"]), tmp_path, progress=False)
  steps = frozen[:2]  # then the evaluation's labels
  assert len(steps) == 2 and min(steps) > 1000
  assert gc.get_freeze_count() == 0


def test_synthetic_lidar_takes_a_test_split_from_its_own_seed():
  from train import tasks
  assert tasks.build_task(configs.get_config("spvcnn_kitti_smoke")).test_set is None
  task = tasks.build_task(configs.get_config("spvcnn_kitti_smoke", ["data.synthetic.test_events=3"]))
  assert len(task.test_set) == 3
  test, val = task.test_set[0], task.eval_set[0]
  expected = data.SyntheticLidar(1, seed=2, beams=32, azimuths=128)[0]
  np.testing.assert_array_equal(test["points"], expected["points"])
  assert test["points"].shape != val["points"].shape or not np.array_equal(test["points"], val["points"])


def test_evaluation_counts_every_event_of_a_split_that_is_not_whole_batches(tmp_path):
  # Regression: evaluation skipped the last len % batch_size events.
  cfg = configs.get_config("uresnet_lartpc_smoke", ["steps=1", "eval_every=1", "data.synthetic.eval_events=5",
                                                     "data.synthetic.test_events=3"])
  train_lib.train(cfg, tmp_path, progress=False)
  records = {r["split"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
  syn = cfg["data"]["synthetic"]
  for split, events, seed in (("eval", syn["eval_events"], syn["eval_seed"]), ("test", syn["test_events"],
                                                                             syn["test_seed"])):
    dataset = data.SyntheticLArTPC(events, seed=seed, size=cfg["data"]["size"], scheme=cfg["data"]["scheme"])
    assert records[split]["counted"] == sum(len(ev["coords"]) for ev in dataset)
    assert records[split]["ignored"] == 0


def test_a_rerun_of_the_trainer_loads_its_compiled_steps_from_the_cache(tmp_path):
  # The persistent compilation cache: the first run writes the compiled train and eval steps, a second process
  # (a fresh workdir, so it trains again) finds every program there and writes nothing new.
  cache = tmp_path / "xla"
  root = Path(__file__).resolve().parents[1]

  def run(workdir):
    cmd = [sys.executable, "-m", "train", "--config", "uresnet_lartpc_smoke", "--workdir", str(workdir),
           "--no-progress", "--compile-cache", str(cache), "--set", "steps=2", "--set", "eval_every=2",
           "--set", "checkpoint_every=2"]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return sorted(p.name for p in cache.iterdir())

  first = run(tmp_path / "a")
  assert first, "the first run wrote nothing to the compilation cache"
  assert run(tmp_path / "b") == first


def test_rerunning_a_finished_run_reports_it(tmp_path, capsys):
  # Regression: the rerun resumed at the last step and exited 0 with no metrics.
  from train import __main__ as cli
  args = ["--config", "uresnet_lartpc_smoke", "--workdir", str(tmp_path), "--compile-cache", "off",
          "--set", "steps=2", "--set", "eval_every=2"]
  assert cli.main(args) == 0
  first = capsys.readouterr().out
  assert "compiling the train step for a new batch shape" in first and "step 2/2: loss" in first  # not a TTY
  assert cli.main(args) == 0
  again = capsys.readouterr().out
  assert "already complete (step 2 of 2)" in again and "--no-resume" in again
  final = [line for line in first.splitlines() if line.startswith("final:")]
  assert final and final == [line for line in again.splitlines() if line.startswith("final:")]
  # Regression: following that advice failed at the first checkpoint ("Checkpoint for step 2 already exists").
  assert cli.main(args + ["--no-resume"]) == 0
  fresh = capsys.readouterr().out
  assert "--no-resume: removing the earlier run's checkpoints, metrics.jsonl, tensorboard" in fresh
  assert [line for line in fresh.splitlines() if line.startswith("final:")] == final  # the same run again
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "test"] == [2]  # only the new run's records


def test_minkunet_is_scored_per_point_on_its_scans(tmp_path):
  # SemanticKITTI's mIoU is per point: every point of the eval scans is counted, not one per voxel.
  cfg = configs.get_config("minkunet_kitti_smoke", ["steps=1", "eval_every=1"])
  train_lib.train(cfg, tmp_path, progress=False)
  rec = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["split"] == "eval"]
  syn = cfg["data"]["synthetic"]
  scans = data.SyntheticLidar(syn["eval_events"], seed=syn["eval_seed"], beams=syn["beams"], azimuths=syn["azimuths"])
  points = sum(len(s["points"]) for s in scans)
  voxels = sum(len(data.scan_to_voxels(s, cfg["data"]["voxel_size"])["coords"]) for s in scans)
  assert rec[-1]["counted"] + rec[-1]["ignored"] == points > voxels


def _resident_mb() -> float:
  return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read resident memory")
def test_release_freed_memory_hands_freed_heap_pages_back():
  from jsparse3d.training import _memory
  if _memory._malloc_trim() is None:
    pytest.skip("the C library has no malloc_trim (not glibc): release_freed_memory is a no-op there")
  # 160 MB of 4 KB heap blocks (below the mmap threshold), every tenth kept: free() alone cannot shrink a heap
  # with live blocks above the holes, so the freed pages stay resident until they are trimmed.
  blocks = [bytes([i % 251]) * 4096 for i in range(40_000)]
  kept = blocks[::10]
  del blocks
  before = _resident_mb()
  assert training.release_freed_memory()
  after = _resident_mb()
  assert before - after > 80, (before, after)
  assert len(kept) == 4000


def test_huge_pages_env_adds_the_tunable_only_where_it_changes_something():
  from jsparse3d.training._memory import _huge_pages_env
  madvise = "always [madvise] never\n"
  assert _huge_pages_env({"A": "1"}, madvise) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert _huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, madvise)["GLIBC_TUNABLES"] == (
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  assert _huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, madvise) is None  # the user's opt-out
  assert _huge_pages_env({}, "[always] madvise never\n") is None  # huge pages without asking
  assert _huge_pages_env({}, "always madvise [never]\n") is None
  assert _huge_pages_env({}, None) is None  # no transparent huge pages in this kernel


_FAULTS_CHILD = """
import os, resource, sys
print("start", flush=True)
from jsparse3d import training
training.restart_with_huge_pages()
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):  # 64 MB blocks: glibc maps each one afresh and unmaps it when freed, as XLA's temporaries
  block = libc.malloc(64 * 2**20)  # (numpy would ask for huge pages itself)
  ctypes.memset(block, 1, 64 * 2**20)
  libc.free(block)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8
print("tunables", os.environ.get("GLIBC_TUNABLES"), "faults", faults, flush=True)
"""


def test_restart_with_huge_pages_restarts_once_and_cuts_page_faults():
  import platform
  mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or not mode.exists():
    pytest.skip("needs glibc on Linux with transparent huge pages")
  if "[madvise]" not in mode.read_text():
    pytest.skip(f"transparent huge pages are {mode.read_text().strip()!r}: restart_with_huge_pages does nothing")

  def run(**env):
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | env
    out = subprocess.run([sys.executable, "-c", _FAULTS_CHILD], capture_output=True, text=True, env=environ,
                         timeout=120, check=True).stdout.split()
    return out.count("start"), out[out.index("tunables") + 1], float(out[out.index("faults") + 1])

  starts, tunables, faults = run()
  assert starts == 2 and tunables == "glibc.malloc.hugetlb=1"
  starts_off, tunables_off, faults_off = run(GLIBC_TUNABLES="glibc.malloc.hugetlb=0")  # opted out: no restart
  assert starts_off == 1 and tunables_off == "glibc.malloc.hugetlb=0"
  # 16,384 pages of 4 KiB a block, against 32 of 2 MiB plus the 4 KiB pages of its unaligned ends (about 550)
  assert faults_off > 10_000 and faults < faults_off / 10, (faults, faults_off)
