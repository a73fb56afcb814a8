"""Segmentation losses over valid voxels (or points), averaged per event and then over events."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def class_weights_inverse_frequency(labels, num_classes: int, *, axis_name: str | None = None):
  """``float32[num_classes]``: ``total / (present * count_c)`` over the valid labels of a batch (0 for absent
  classes), the per-batch weighting of the LArTPC study (each present class weighs the same in total).

  With ``axis_name`` (under pmap) the counts are those of the global batch, summed over devices.
  """
  valid = labels >= 0
  counts = jnp.zeros((num_classes,), jnp.float32).at[jnp.where(valid, labels, num_classes)].add(1.0, mode="drop")
  if axis_name is not None:
    counts = jax.lax.psum(counts, axis_name)
  present = jnp.sum(counts > 0).astype(jnp.float32)
  total = jnp.sum(counts)
  return jnp.where(counts > 0, total / (jnp.maximum(present, 1.0) * jnp.maximum(counts, 1.0)), 0.0)


def segmentation_loss(logits, labels, events, num_events: int, *, class_weights=None):
  """Cross-entropy over rows with ``labels >= 0``, averaged within each event, then over the events present.

  Args:
    logits: [N, K] (any float dtype; computed in float32). labels: int [N], negative = ignore (padding).
    events: int [N] event (batch) index of each row; rows with labels < 0 are ignored whatever it holds.
    num_events: static number of events in the batch.
    class_weights: None, ``"inverse_frequency"`` (per batch) or float [K].
  Returns:
    scalar float32 loss.
  """
  total, present = segmentation_loss_terms(logits, labels, events, num_events, class_weights=class_weights)
  return total / jnp.maximum(present, 1.0)


def segmentation_loss_terms(logits, labels, events, num_events: int, *, class_weights=None,
                            axis_name: str | None = None):
  """``(sum of per-event losses, number of events present)`` of :func:`segmentation_loss`, as float32 scalars.

  Data-parallel steps divide each device's sum by the global number of events present and ``psum`` the result
  (and the gradients), which equals the loss of the global batch even when devices hold different numbers of
  events; ``axis_name`` makes ``"inverse_frequency"`` weights use the global batch's class counts.
  """
  num_classes = logits.shape[-1]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  valid = labels >= 0
  nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[:, None], axis=1)[:, 0]
  if class_weights is None:
    w = jnp.ones_like(nll)
  else:
    if isinstance(class_weights, str):
      if class_weights != "inverse_frequency":
        raise ValueError(f"class_weights must be None, 'inverse_frequency' or an array, got {class_weights!r}.")
      class_weights = class_weights_inverse_frequency(labels, num_classes, axis_name=axis_name)
    w = jnp.asarray(class_weights, jnp.float32)[jnp.maximum(labels, 0)]
  w = jnp.where(valid, w, 0.0)
  ids = jnp.where(valid, events, num_events)
  num = jax.ops.segment_sum(w * nll, ids, num_segments=num_events + 1)[:num_events]
  den = jax.ops.segment_sum(w, ids, num_segments=num_events + 1)[:num_events]
  has = den > 0
  per_event = jnp.where(has, num / jnp.where(has, den, 1.0), 0.0)
  return jnp.sum(per_event), jnp.sum(has).astype(jnp.float32)
