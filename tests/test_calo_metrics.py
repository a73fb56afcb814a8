"""Detector metrics and the instance loss against brute-force numpy, and a hand-worked panoptic example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsparse3d import training


def _brute_auc(scores, positive, weights):
  """Sum over every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
  num = den = 0.0
  for i in np.flatnonzero(positive):
    for j in np.flatnonzero(~positive):
      pair = weights[i] * weights[j]
      num += pair * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0)
      den += pair
  return num / den


@pytest.mark.parametrize("weighted", [False, True])
def test_roc_auc_is_the_pairwise_rank_probability(weighted, rng):
  scores = np.round(rng.uniform(size=300), 1)  # many ties
  positive = rng.uniform(size=300) < 0.3 + 0.5 * scores
  weights = rng.exponential(size=300) if weighted else np.ones(300)
  got = training.roc_auc(scores, positive, weights if weighted else None)
  assert abs(got - _brute_auc(scores, positive, weights)) < 1e-12
  fpr, tpr, thresholds = training.roc_curve(scores, positive, weights if weighted else None)
  assert fpr[0] == tpr[0] == 0 and abs(fpr[-1] - 1) < 1e-12 and abs(tpr[-1] - 1) < 1e-12
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) < 0)
  # Each point is the rates of "score >= threshold", counted directly.
  for k in (3, 7):
    called = scores >= thresholds[k]
    assert abs(tpr[k] - weights[called & positive].sum() / weights[positive].sum()) < 1e-12
    assert abs(fpr[k] - weights[called & ~positive].sum() / weights[~positive].sum()) < 1e-12
  assert training.roc_auc(-scores, positive) == pytest.approx(1 - training.roc_auc(scores, positive), abs=1e-12)


def test_roc_needs_both_classes_and_matching_shapes():
  with pytest.raises(ValueError, match="positive and negative"):
    training.roc_auc(np.array([0.1, 0.2]), np.array([True, True]))
  with pytest.raises(ValueError, match="one length"):
    training.roc_auc(np.array([0.1, 0.2]), np.array([True]))
  with pytest.raises(ValueError, match="non-negative"):
    training.roc_auc(np.array([0.1, 0.2]), np.array([True, False]), np.array([1.0, -1.0]))


def test_weighted_confusion_adds_each_hit_weight(rng):
  labels = rng.integers(-1, 4, 500)
  predicted = rng.integers(0, 4, 500)
  weights = rng.exponential(size=500)
  want = np.zeros((4, 4))
  for t, p, w in zip(labels, predicted, weights):
    if t >= 0:
      want[t, p] += w
  np.testing.assert_allclose(training.weighted_confusion(predicted, labels, 4, weights), want, rtol=1e-12)
  counts = training.weighted_confusion(predicted, labels, 4)
  assert counts.sum() == (labels >= 0).sum()
  np.testing.assert_allclose(training.row_normalised(counts).sum(axis=1), 1.0)


def test_panoptic_quality_of_a_hand_worked_event():
  # Truth: cluster 0 = hits 0-3, cluster 1 = hits 4-5, noise = hits 6-7, cluster 2 = hits 8-9.
  truth = np.array([0, 0, 0, 0, 1, 1, -1, -1, 2, 2])
  # Predicted: A = 0-2 (IoU 3/4 with cluster 0), B = 3-5 (IoU 2/3 with cluster 1), C = the noise hits (void: not a
  # false positive), D = hit 8 (IoU 1/2 with cluster 2: not above 0.5, so D is a false positive and 2 is missed),
  # hit 9 unassigned.
  predicted = np.array([7, 7, 7, 3, 3, 3, 5, 5, 9, -1])
  c = training.panoptic_counts(predicted, truth)
  assert (c["tp"], c["fp"], c["fn"]) == (2, 1, 1)
  m = training.match_clusters(predicted, truth)  # the matching behind the counts
  assert m["predicted_ids"].tolist() == [3, 5, 7, 9] and m["match"].tolist() == [1, -1, 0, -1]
  assert m["void"].tolist() == [0, 2, 0, 0] and m["size"].tolist() == [3, 2, 3, 1]
  assert c["iou_sum"] == pytest.approx(3 / 4 + 2 / 3)
  q = training.panoptic_quality([c, {"tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0}])
  assert q["sq"] == pytest.approx((3 / 4 + 2 / 3) / 2)
  assert q["rq"] == pytest.approx(2 / (2 + 0.5 + 0.5))
  assert q["pq"] == pytest.approx(q["sq"] * q["rq"])
  # Energy weighting: hit 3 carrying 5 units breaks both matches (A: 3 / 8, B: 2 / 7).
  weights = np.array([1, 1, 1, 5, 1, 1, 1, 1, 1, 1.0])
  c = training.panoptic_counts(predicted, truth, weights)
  assert (c["tp"], c["fp"], c["fn"]) == (0, 3, 3) and c["iou_sum"] == 0.0
  # A perfect prediction under any relabelling of the ids.
  c = training.panoptic_counts(np.where(truth >= 0, 10 - truth, -1), truth)
  assert (c["tp"], c["fp"], c["fn"], c["iou_sum"]) == (3, 0, 0, 3.0)
  with pytest.raises(ValueError, match="unique"):
    training.panoptic_counts(predicted, truth, iou_threshold=0.4)


def _brute_discriminative(e, inst, ev, delta_v, delta_d, reg_weight):
  """The discriminative loss event by event, cluster by cluster, pair by pair."""
  total, events = 0.0, 0
  for event in np.unique(ev[ev >= 0]):
    ids = np.unique(inst[(ev == event) & (inst >= 0)])
    if not len(ids):
      continue
    means = [e[(ev == event) & (inst == i)].mean(axis=0) for i in ids]
    pull = np.mean([np.mean(np.maximum(np.linalg.norm(e[(ev == event) & (inst == i)] - m, axis=1) - delta_v, 0) ** 2)
                    for i, m in zip(ids, means)])
    pairs = [max(2 * delta_d - np.linalg.norm(a - b), 0) ** 2 for i, a in enumerate(means)
             for j, b in enumerate(means) if i != j]
    push = np.mean(pairs) if pairs else 0.0
    total += pull + push + reg_weight * np.mean([np.linalg.norm(m) for m in means])
    events += 1
  return total, events


def test_discriminative_loss_matches_a_loop_over_events_clusters_and_pairs(rng):
  n = 200
  e = rng.normal(size=(n, 3)).astype(np.float32)
  inst = rng.integers(-1, 5, n)
  ev = rng.integers(-1, 3, n)
  inst[ev == 2] = -1  # an event with hits but no cluster
  inst[0], ev[0] = 7, 1  # a cluster of one hit: it sits on its mean, where a plain norm has no gradient
  inst[ev == 1] = np.where(inst[ev == 1] == 7, -1, inst[ev == 1])
  inst[0] = 7
  total, events = training.discriminative_loss(jnp.asarray(e), jnp.asarray(inst), jnp.asarray(ev), 4, 8,
                                               delta_v=0.3, delta_d=1.2, reg_weight=0.01)
  want_total, want_events = _brute_discriminative(e.astype(np.float64), inst, ev, 0.3, 1.2, 0.01)
  assert float(events) == want_events == 2
  assert abs(float(total) - want_total) < 1e-5 * max(1.0, want_total)
  grad = jax.grad(lambda x: training.discriminative_loss(x, jnp.asarray(inst), jnp.asarray(ev), 4, 8)[0])(
      jnp.asarray(e))
  assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)  # one-hit clusters included
  with pytest.raises(ValueError, match="max_instances"):
    training.check_instances(np.array([0, 3, 9]), 8)


def test_clustering_recovers_separated_clusters_and_leaves_no_candidate_out(rng):
  centres = np.array([[0, 0], [6, 0], [0, 6], [6, 6]], np.float32)
  truth = rng.integers(0, 4, 300)
  e = centres[truth] + rng.normal(0, 0.3, (300, 2)).astype(np.float32)
  noise = rng.uniform(size=300) < 0.2
  truth = np.where(noise, -1, truth)
  energy = rng.exponential(size=300).astype(np.float32)
  run = jax.jit(training.cluster_embeddings, static_argnames=("bandwidth", "max_clusters"))
  ids = np.asarray(run(jnp.asarray(e), jnp.asarray(~noise), jnp.asarray(energy), bandwidth=2.0, max_clusters=8))
  assert np.all(ids[noise] == -1)
  c = training.panoptic_counts(ids, truth)
  assert (c["tp"], c["fp"], c["fn"]) == (4, 0, 0) and c["iou_sum"] == pytest.approx(4.0)
  # The first seed is the most energetic candidate.
  first = np.flatnonzero(~noise)[np.argmax(energy[~noise])]
  assert ids[first] == 0
  # Too few cluster slots: the leftovers join the nearest centre; none stays out.
  ids = np.asarray(run(jnp.asarray(e), jnp.asarray(~noise), jnp.asarray(energy), bandwidth=2.0, max_clusters=2))
  assert np.all(ids[~noise] >= 0) and set(np.unique(ids[~noise])) == {0, 1}
