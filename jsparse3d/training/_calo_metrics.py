"""Detector metrics on host arrays (numpy): ROC curves and their area, energy-weighted confusion, and panoptic
quality of clusters with IoU > 0.5 matching. Every function takes optional per-hit ``weights`` (a physicist's
energy weighting: a hit counts with its energy, not as one)."""

from __future__ import annotations

import numpy as np


def _weights(weights, n):
  w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (n,) or np.any(w < 0) or not np.all(np.isfinite(w)):
    raise ValueError(f"weights must be finite, non-negative and one per hit ({n}), got shape {w.shape}.")
  return w


def roc_curve(scores, positive, weights=None):
  """The ROC curve of ``scores`` (higher: more likely positive) for the boolean truth ``positive``.

  Args:
    scores: float [N]. positive: bool [N]. weights: optional float [N] (e.g. hit energies).
  Returns:
    ``(fpr, tpr, thresholds)``: one point per distinct score, from the highest threshold down, after a first
    point (0, 0) at threshold +inf; a hit is called positive when its score is >= the threshold.

  Example:
    >>> fpr, tpr, _ = roc_curve(np.array([0.9, 0.8, 0.3, 0.1]), np.array([True, False, True, False]))
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
  """
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  if scores.shape != positive.shape or scores.ndim != 1:
    raise ValueError(f"scores and positive must be 1D and of one length, got {scores.shape} and {positive.shape}.")
  w = _weights(weights, len(scores))
  order = np.argsort(-scores, kind="stable")
  s, p, w = scores[order], positive[order], w[order]
  last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last hit of each distinct score
  tp, fp = np.cumsum(w * p)[last], np.cumsum(w * ~p)[last]
  total_p, total_n = tp[-1] if len(tp) else 0.0, fp[-1] if len(fp) else 0.0
  if total_p <= 0 or total_n <= 0:
    raise ValueError("a ROC curve needs positive and negative hits (with non-zero weight); this set has "
                     f"{total_p:g} positive and {total_n:g} negative.")
  return np.r_[0.0, fp / total_n], np.r_[0.0, tp / total_p], np.r_[np.inf, s[last]]


def roc_auc(scores, positive, weights=None) -> float:
  """The area under :func:`roc_curve`: the chance that a random positive hit scores above a random negative one
  (ties count half), each drawn with probability proportional to its weight."""
  fpr, tpr, _ = roc_curve(scores, positive, weights)
  return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def weighted_confusion(predicted, labels, num_classes: int, weights=None) -> np.ndarray:
  """``float64[K, K]``: row = true class, column = predicted class, each hit adding its weight (1 if None).
  Labels outside ``0..K-1`` (padding, ignored hits) are left out."""
  predicted, labels = np.asarray(predicted).reshape(-1), np.asarray(labels).reshape(-1)
  w = _weights(weights, len(labels))
  keep = (labels >= 0) & (labels < num_classes)
  out = np.zeros((num_classes, num_classes))
  np.add.at(out, (labels[keep], predicted[keep]), w[keep])
  return out


def row_normalised(matrix) -> np.ndarray:
  """Each row over its sum (the talks' layout: the share of each true class given each prediction); 0 rows stay 0."""
  matrix = np.asarray(matrix, np.float64)
  return matrix / np.maximum(matrix.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)


def match_clusters(predicted, truth, weights=None, *, iou_threshold: float = 0.5) -> dict:
  """Matches the predicted clusters of one event to the true ones by IoU (over hits, or over ``weights``).

  Clusters are the ids >= 0 of ``predicted`` and ``truth`` (int [N] per hit; -1: no cluster, e.g. noise). A
  predicted and a true cluster match when their IoU exceeds ``iou_threshold`` (0.5 or more makes every match
  unique).

  Returns:
    dict with ``predicted_ids`` [P] and ``truth_ids`` [T] (the ids present, sorted), ``iou`` float [P, T],
    ``match`` int [P] (the true id each predicted cluster matches, -1 if none), ``size`` float [P] (each predicted
    cluster's weight) and ``void`` float [P] (its weight on hits without a true cluster).
  """
  predicted, truth = np.asarray(predicted).reshape(-1), np.asarray(truth).reshape(-1)
  if predicted.shape != truth.shape:
    raise ValueError(f"predicted and truth need one id per hit, got {predicted.shape} and {truth.shape}.")
  if not 0.5 <= iou_threshold < 1:
    raise ValueError(f"iou_threshold must be in [0.5, 1) so that matches are unique, got {iou_threshold}.")
  w = _weights(weights, len(truth))
  pred_ids = np.unique(predicted[predicted >= 0])
  true_ids = np.unique(truth[truth >= 0])
  pred_index = np.searchsorted(pred_ids, predicted)
  true_index = np.searchsorted(true_ids, truth)
  inter = np.zeros((len(pred_ids), len(true_ids)))
  both = (predicted >= 0) & (truth >= 0)
  np.add.at(inter, (pred_index[both], true_index[both]), w[both])
  pred_size = np.bincount(pred_index[predicted >= 0], weights=w[predicted >= 0], minlength=len(pred_ids))
  true_size = np.bincount(true_index[truth >= 0], weights=w[truth >= 0], minlength=len(true_ids))
  void = np.bincount(pred_index[(predicted >= 0) & (truth < 0)], weights=w[(predicted >= 0) & (truth < 0)],
                     minlength=len(pred_ids))
  union = pred_size[:, None] + true_size[None, :] - inter
  iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
  match = np.full(len(pred_ids), -1, np.int64)
  rows, cols = np.nonzero(iou > iou_threshold)
  match[rows] = true_ids[cols]
  return {"predicted_ids": pred_ids, "truth_ids": true_ids, "iou": iou, "match": match, "size": pred_size,
          "void": void}


def panoptic_counts(predicted, truth, weights=None, *, iou_threshold: float = 0.5) -> dict:
  """The counts of one event's clusters that :func:`panoptic_quality` sums over events, from
  :func:`match_clusters`.

  As in COCO's panoptic metric, an unmatched predicted cluster is not a false positive when more than half of it
  lies on hits without a true cluster (those are scored as the noise class instead).

  Returns:
    dict with ``tp``, ``fp``, ``fn`` (counts) and ``iou_sum`` (the summed IoU of the matches).
  """
  m = match_clusters(predicted, truth, weights, iou_threshold=iou_threshold)
  matched = m["iou"] > iou_threshold
  fp = int(np.sum(~matched.any(axis=1) & (m["void"] <= m["size"] / 2)))
  return {"tp": int(matched.sum()), "fp": fp, "fn": int(np.sum(~matched.any(axis=0))),
          "iou_sum": float(m["iou"][matched].sum())}


def panoptic_quality(counts) -> dict:
  """PQ = SQ x RQ from summed :func:`panoptic_counts`: SQ is the mean IoU of the matches, RQ = TP / (TP + FP / 2
  + FN / 2) (an F1 score). ``counts``: one dict or a list of them (one per event)."""
  counts = [counts] if isinstance(counts, dict) else list(counts)
  tp, fp, fn = (sum(c[k] for c in counts) for k in ("tp", "fp", "fn"))
  iou_sum = sum(c["iou_sum"] for c in counts)
  denominator = tp + fp / 2 + fn / 2
  sq = iou_sum / tp if tp else 0.0
  rq = tp / denominator if denominator else 0.0
  return {"pq": sq * rq, "sq": sq, "rq": rq, "tp": tp, "fp": fp, "fn": fn}
