"""Losses and metrics against numpy; the trainer: loss goes down, exact resume, clear errors for bad setups."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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
  cm.add(np.stack([want, want]))  # a leading device axis is summed
  np.testing.assert_array_equal(cm.counts, 3 * want)


def _smoke(**over):
  return configs.get_config("uresnet_lartpc_smoke", [f"{k}={v}" for k, v in over.items()])


def _params(state):
  return jax.tree.leaves(nnx.to_pure_dict(state))


@pytest.mark.slow  # minutes on 2 cores; run with -m slow
def test_kill_and_resume_gives_bitwise_identical_parameters(tmp_path):
  cfg = _smoke(steps=6, eval_every=6, checkpoint_every=6)
  full = train_lib.train(cfg, tmp_path / "full", progress=False)
  part = train_lib.train(cfg, tmp_path / "split", progress=False, stop_after=2)
  assert part["step"] == 2
  resumed = train_lib.train(cfg, tmp_path / "split", progress=False)
  assert resumed["step"] == 6
  for a, b in zip(_params(full["state"]), _params(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  records = [line for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert any('"split": "eval"' in r for r in records) and (tmp_path / "full" / "confusion.png").exists()
  train_losses = [eval(r.replace("null", "None"))["loss"] for r in records if '"split": "train"' in r]
  assert train_losses[-1] < train_losses[0]


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
