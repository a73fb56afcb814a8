"""Segmentation metrics from confusion matrices: counted on device per step, accumulated on the host in int64."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jsparse3d.training._losses import _check_if_concrete
from jsparse3d.training._losses import _counted


def confusion_matrix(logits, labels, num_classes: int, *, ignore_index: int | None = None):
  """``int32[K + 1, K]`` counts of (true class, predicted class); the extra last row counts the rows labelled
  ``ignore_index`` by predicted class, so ignored points are counted, not lost. Padding (negative labels) is not
  counted. A label outside the classes that is not ``ignore_index`` is an error for concrete labels and lands
  in no cell under ``jit`` (the loss of the same step is NaN).

  One step's counts fit int32 easily; accumulate them across steps with :class:`ConfusionMatrix` (int64).

  Example:
    >>> logits = jax.random.normal(key, (100, 19))
    >>> labels = jnp.where(jnp.arange(100) % 10 == 0, 255, jnp.arange(100) % 19)   # every tenth unlabelled
    >>> cm = ConfusionMatrix(19).add(confusion_matrix(logits, labels, 19, ignore_index=255))
    >>> cm.num_ignored
    10
  """
  _check_if_concrete(labels, num_classes, ignore_index)
  pred = jnp.argmax(logits, axis=-1)
  row = jnp.where(_counted(labels, ignore_index) & (labels < num_classes), labels, -1)
  if ignore_index is not None:
    row = jnp.where(labels == ignore_index, num_classes, row)
  idx = jnp.where(row >= 0, row * num_classes + pred, (num_classes + 1) * num_classes)
  counts = jnp.zeros(((num_classes + 1) * num_classes + 1,), jnp.int32).at[idx].add(1)
  return counts[:-1].reshape(num_classes + 1, num_classes)


class ConfusionMatrix:
  """Host-side int64 accumulator of confusion matrices (from steps, devices or processes), and the metrics.

  Attributes:
    counts: ``int64[K, K]``, rows = true class, columns = predicted class.
    ignored: ``int64[K]``, rows labelled ``ignore_index`` by predicted class (not in any metric).
  """

  def __init__(self, num_classes: int):
    self.counts = np.zeros((num_classes, num_classes), np.int64)
    self.ignored = np.zeros((num_classes,), np.int64)

  def add(self, counts) -> "ConfusionMatrix":
    """Adds :func:`confusion_matrix` output (``[K + 1, K]``, or with leading device axes, which are summed)."""
    k = self.counts.shape[0]
    c = np.asarray(counts, np.int64)
    if c.shape[-2:] != (k + 1, k):
      raise ValueError(f"expected confusion counts of shape [..., {k + 1}, {k}] (from confusion_matrix), got "
                       f"{c.shape}.")
    c = c.reshape((-1, k + 1, k)).sum(axis=0)
    self.counts += c[:k]
    self.ignored += c[k]
    return self

  @property
  def num_ignored(self) -> int:
    return int(self.ignored.sum())

  @property
  def total(self) -> int:
    return int(self.counts.sum())

  def nonzero_accuracy(self) -> float:
    """Fraction of non-empty voxels whose predicted class is right."""
    return float(np.trace(self.counts) / max(self.total, 1))

  def per_class_accuracy(self) -> list[float | None]:
    """Per true class, the fraction predicted right (None for a class absent from the labels)."""
    rows = self.counts.sum(axis=1)
    return [float(self.counts[c, c] / rows[c]) if rows[c] else None for c in range(len(rows))]

  def iou(self) -> list[float | None]:
    tp = np.diag(self.counts)
    union = self.counts.sum(axis=0) + self.counts.sum(axis=1) - tp
    present = self.counts.sum(axis=1) > 0
    return [float(tp[c] / union[c]) if present[c] else None for c in range(len(tp))]

  def miou(self) -> float:
    """Mean IoU over the classes present in the labels."""
    values = [v for v in self.iou() if v is not None]
    return float(np.mean(values)) if values else 0.0

  def precision(self) -> list[float | None]:
    """Per class, the fraction of the rows predicted as it that truly are it (None if none is predicted)."""
    cols = self.counts.sum(axis=0)
    return [float(self.counts[c, c] / cols[c]) if cols[c] else None for c in range(len(cols))]

  def recall(self) -> list[float | None]:
    """Per class, the fraction of its rows predicted as it: :meth:`per_class_accuracy`."""
    return self.per_class_accuracy()

  def f1(self) -> list[float | None]:
    """Per class present in the labels, the harmonic mean of precision and recall (0 if it is never predicted
    right); None for a class absent from the labels."""
    tp = np.diag(self.counts)
    rows, cols = self.counts.sum(axis=1), self.counts.sum(axis=0)
    return [float(2 * tp[c] / (rows[c] + cols[c])) if rows[c] else None for c in range(len(tp))]

  def mean_f1(self) -> float:
    """Mean F1 over the classes present in the labels (the PILArNet-M papers' headline segmentation number)."""
    values = [v for v in self.f1() if v is not None]
    return float(np.mean(values)) if values else 0.0


def part_ious(logits, labels, shapes, parts_per_shape) -> np.ndarray:
  """ShapeNet-part's per-object IoU: ``float64[B]``, each object's mean IoU over the parts of its category.

  The protocol of the benchmark's papers: each point's prediction is the best-scoring part *of its object's
  category* (the category is given), and a part that is neither in the labels nor in the predictions of an object
  counts as IoU 1. The instance mIoU is the mean of this array over the objects; the category mIoU is the mean
  over categories of their objects' means.

  Args:
    logits: ``[B, N, P]`` (P parts of all categories, numbered category by category).
    labels: int ``[B, N]`` part labels.
    shapes: int ``[B]``, each object's category.
    parts_per_shape: the number of parts of each category, in order (``(4, 2, 2, 4, ...)`` for ShapeNet-part).

  Example:
    >>> logits = np.zeros((1, 4, 6)); logits[0, :, 1] = 1   # every point says part 1
    >>> part_ious(logits, np.array([[0, 1, 1, 1]]), np.array([0]), (2, 4))   # parts 0 and 1: IoU 0 and 3/4
    array([0.375])
  """
  logits, labels, shapes = np.asarray(logits), np.asarray(labels), np.asarray(shapes)
  offsets = np.concatenate([[0], np.cumsum(parts_per_shape)])
  if logits.ndim != 3 or labels.shape != logits.shape[:2] or shapes.shape != logits.shape[:1]:
    raise ValueError(f"part_ious: expected logits [B, N, P], labels [B, N] and shapes [B], got {logits.shape}, "
                     f"{labels.shape} and {shapes.shape}.")
  if logits.shape[-1] != offsets[-1]:
    raise ValueError(f"part_ious: the logits have {logits.shape[-1]} parts but parts_per_shape sums to "
                     f"{offsets[-1]}.")
  out = np.empty(len(shapes))
  for b, c in enumerate(shapes):
    lo, hi = offsets[c], offsets[c + 1]
    if labels[b].min() < lo or labels[b].max() >= hi:
      raise ValueError(f"part_ious: object {b} of category {c} has labels outside its parts {lo}..{hi - 1}.")
    pred = lo + np.argmax(logits[b, :, lo:hi], axis=-1)
    ious = []
    for part in range(lo, hi):
      union = np.sum((pred == part) | (labels[b] == part))
      ious.append(np.sum((pred == part) & (labels[b] == part)) / union if union else 1.0)
    out[b] = np.mean(ious)
  return out
