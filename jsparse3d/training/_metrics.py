"""Segmentation metrics from confusion matrices: counted on device per step, accumulated on the host in int64."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def confusion_matrix(logits, labels, num_classes: int):
  """``int32[K, K]`` counts of (true class, predicted class) over rows with ``labels >= 0``.

  One step's counts fit int32 easily; accumulate them across steps with :class:`ConfusionMatrix` (int64).
  """
  pred = jnp.argmax(logits, axis=-1)
  valid = labels >= 0
  idx = jnp.where(valid, labels * num_classes + pred, num_classes * num_classes)
  counts = jnp.zeros((num_classes * num_classes + 1,), jnp.int32).at[idx].add(1)
  return counts[:-1].reshape(num_classes, num_classes)


class ConfusionMatrix:
  """Host-side int64 accumulator of confusion matrices (from steps, devices or processes), and the metrics.

  Attributes:
    counts: ``int64[K, K]``, rows = true class, columns = predicted class.
  """

  def __init__(self, num_classes: int):
    self.counts = np.zeros((num_classes, num_classes), np.int64)

  def add(self, counts) -> "ConfusionMatrix":
    c = np.asarray(counts, np.int64)
    self.counts += c.reshape((-1,) + self.counts.shape).sum(axis=0)  # a leading device axis is summed
    return self

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
