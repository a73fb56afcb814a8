"""Segmentation losses over valid voxels (or points), averaged per event and then over events."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_labels(labels, num_classes: int, ignore_index: int | None = None, *, what: str = "labels") -> None:
  """Raises a ``ValueError`` naming the first label that is neither a class (``0..num_classes-1``), padding
  (negative) nor ``ignore_index``. Host arrays only: call it on a batch before the step (the trainer does).

  Example:
    >>> check_labels(np.array([0, 3, 255, -1]), 19, ignore_index=255)   # fine
  """
  labels = np.asarray(labels)
  bad = (labels >= num_classes) if ignore_index is None else (labels >= num_classes) & (labels != ignore_index)
  if bad.any():
    value = int(labels[bad].flat[0])
    fix = (f"pass ignore_index={value} if it marks unlabelled points (SemanticKITTI's 'spvnas' map uses 255)"
           if ignore_index is None else f"map it to a class or to ignore_index={ignore_index}")
    raise ValueError(f"{what} hold {int(bad.sum())} values outside the {num_classes} classes (e.g. {value}); {fix}.")


def _counted(labels, ignore_index):
  """Rows that enter losses and metrics: not padding (negative) and not ``ignore_index``."""
  valid = labels >= 0
  return valid if ignore_index is None else valid & (labels != ignore_index)


def _check_if_concrete(labels, num_classes, ignore_index):
  if not isinstance(labels, jax.core.Tracer):
    check_labels(labels, num_classes, ignore_index)


def class_weights_inverse_frequency(labels, num_classes: int, *, ignore_index: int | None = None,
                                    axis_name: str | None = None):
  """``float32[num_classes]``: ``total / (present * count_c)`` over the counted labels of a batch (0 for absent
  classes), the per-batch weighting of the LArTPC study (each present class weighs the same in total).

  With ``axis_name`` (under pmap) the counts are those of the global batch, summed over devices.
  """
  valid = _counted(labels, ignore_index)
  counts = jnp.zeros((num_classes,), jnp.float32).at[jnp.where(valid, labels, num_classes)].add(1.0, mode="drop")
  if axis_name is not None:
    counts = jax.lax.psum(counts, axis_name)
  present = jnp.sum(counts > 0).astype(jnp.float32)
  total = jnp.sum(counts)
  return jnp.where(counts > 0, total / (jnp.maximum(present, 1.0) * jnp.maximum(counts, 1.0)), 0.0)


def segmentation_loss(logits, labels, events, num_events: int, *, class_weights=None,
                      ignore_index: int | None = None, focal_gamma: float = 0.0):
  """Cross-entropy over the labelled rows, averaged within each event, then over the events present.

  With ``focal_gamma`` > 0 each row's cross-entropy is scaled by ``(1 - p)^focal_gamma``, ``p`` the softmax
  probability of its true class (the focal loss of Lin et al., ICCV 2017): rows already classified with
  confidence weigh less, so rare, hard classes weigh more without per-class weights. Both can be combined.

  Args:
    logits: [N, K] (any float dtype; computed in float32).
    labels: int [N]: a class in ``0..K-1``, negative for padding, or ``ignore_index``. Concrete labels are
      checked (:func:`check_labels`); under ``jit`` a label outside those makes the loss NaN, never a silent drop.
    events: int [N] event (batch) index of each row; rows not counted are ignored whatever it holds.
    num_events: static number of events in the batch.
    class_weights: None, ``"inverse_frequency"`` (per batch) or float [K].
    ignore_index: a label value that marks unlabelled rows (255 for SemanticKITTI's ``"spvnas"`` map, 0 for its
      ``"official"`` one; :attr:`jsparse3d.data.SemanticKittiDataset.ignore_index`).
    focal_gamma: the focal loss's exponent, >= 0; 0 (the default) is the plain cross-entropy.
  Returns:
    scalar float32 loss.

  Example:
    >>> logits = jax.random.normal(key, (x.capacity, 19))
    >>> labels = jnp.where(jnp.arange(x.capacity) % 7 == 0, 255, 3)
    >>> loss = segmentation_loss(logits, labels, x.coords[:, 0], num_events=2, ignore_index=255)
  """
  total, present = segmentation_loss_terms(logits, labels, events, num_events, class_weights=class_weights,
                                           ignore_index=ignore_index, focal_gamma=focal_gamma)
  return total / jnp.maximum(present, 1.0)


def segmentation_loss_terms(logits, labels, events, num_events: int, *, class_weights=None,
                            ignore_index: int | None = None, axis_name: str | None = None,
                            focal_gamma: float = 0.0):
  """``(sum of per-event losses, number of events present)`` of :func:`segmentation_loss`, as float32 scalars.

  Data-parallel steps divide each device's sum by the global number of events present and ``psum`` the result
  (and the gradients), which equals the loss of the global batch even when devices hold different numbers of
  events; ``axis_name`` makes ``"inverse_frequency"`` weights use the global batch's class counts.
  """
  num_classes = logits.shape[-1]
  if not focal_gamma >= 0:
    raise ValueError(f"focal_gamma must be >= 0 (0: plain cross-entropy; 2 is the focal loss's usual value), "
                     f"got {focal_gamma!r}.")
  _check_if_concrete(labels, num_classes, ignore_index)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  valid = _counted(labels, ignore_index)
  # An out-of-range label gathers NaN (mode="fill"): loud, where dropping it would be silent.
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[:, None], axis=1, mode="fill",
                             fill_value=jnp.nan)[:, 0]
  if focal_gamma:
    nll = nll * (-jnp.expm1(-nll)) ** focal_gamma  # (1 - p)^gamma, p = exp(-nll), without cancellation near p = 1
  if class_weights is None:
    w = jnp.ones_like(nll)
  else:
    if isinstance(class_weights, str):
      if class_weights != "inverse_frequency":
        raise ValueError(f"class_weights must be None, 'inverse_frequency' or an array, got {class_weights!r}.")
      class_weights = class_weights_inverse_frequency(labels, num_classes, ignore_index=ignore_index,
                                                      axis_name=axis_name)
    w = jnp.asarray(class_weights, jnp.float32)[jnp.where(valid, labels, 0)]
  w = jnp.where(valid, w, 0.0)
  ids = jnp.where(valid, events, num_events)
  num = jax.ops.segment_sum(w * nll, ids, num_segments=num_events + 1)[:num_events]
  den = jax.ops.segment_sum(w, ids, num_segments=num_events + 1)[:num_events]
  has = den > 0
  per_event = jnp.where(has, num / jnp.where(has, den, 1.0), 0.0)
  return jnp.sum(per_event), jnp.sum(has).astype(jnp.float32)
