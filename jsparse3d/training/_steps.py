"""Train and eval step builders for a Flax NNX model and an optax optimizer, jitted or pmapped.

The steps are pure functions of ``state = nnx.state((model, optimizer))``: they merge it with a graph definition,
run, and return the new state, so the same code runs under ``jax.jit`` (one device) and ``jax.pmap``. Under pmap
each device's loss is its share of the global batch's loss, so summing losses and gradients over devices gives
exactly the loss and gradient of one device holding the whole batch; call
:func:`jsparse3d.nn.sync_batch_norm` with the same ``axis_name`` before ``nnx.split`` so that batch norms use the
statistics of the global batch too.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jsparse3d.training._adam import apply_gradients
from jsparse3d.training._instances import discriminative_loss
from jsparse3d.training._losses import segmentation_loss_terms
from jsparse3d.training._metrics import confusion_matrix


def sparse_logits(model, x):
  """The default forward: per-voxel logits of a model that maps a SparseTensor to a SparseTensor, and the event
  index of each voxel."""
  return model(x).feats, x.coords[:, 0]


def voxel_point_logits(model, inputs):
  """Per-point logits of a voxel model (MinkUNet): each point takes its voxel's logits, so that a SemanticKITTI
  scan is scored per point as its benchmark is. ``inputs = (x, point_rows)`` from
  :func:`jsparse3d.data.collate_voxel_points`; returns ``(logits [P, K], events int32[P])``, -1 on padding."""
  x, rows = inputs
  logits = model(x).feats
  valid = rows >= 0
  safe = jnp.where(valid, rows, 0)
  return logits[safe], jnp.where(valid, x.coords[safe, 0], -1)


def _is_key(v) -> bool:
  return jax.dtypes.issubdtype(getattr(v, "dtype", None), jax.dtypes.prng_key)


def per_device_keys(state, axis_name: str):
  """``state`` with every PRNG key folded with the device index, so that dropout draws different masks on each
  device of a pmap (the keys are replicated; the train step puts the replicated ones back afterwards)."""
  index = jax.lax.axis_index(axis_name)
  return jax.tree.map(lambda v: jax.random.fold_in(v, index) if _is_key(v) else v, state)


def _loss(logits, labels, events, num_events, class_weights, ignore_index, axis_name, focal_gamma=0.0):
  """The batch loss, or under pmap this device's share of the global batch's loss."""
  total, present = segmentation_loss_terms(logits, labels, events, num_events, class_weights=class_weights,
                                           ignore_index=ignore_index, axis_name=axis_name, focal_gamma=focal_gamma)
  if axis_name is not None:
    present = jax.lax.psum(present, axis_name)
  return total / jnp.maximum(present, 1.0)


def _split_targets(y):
  """``(labels [N], instances [N] or None)`` from a batch's targets: labels, or a dict with both."""
  if isinstance(y, dict):
    return y["labels"].reshape(-1), y["instances"].reshape(-1)
  return y.reshape(-1), None


def _split_outputs(out):
  """``(logits, embeddings or None)`` from a forward's first output: logits, or (logits, embeddings)."""
  return out if isinstance(out, tuple) else (out, None)


def _instance_loss(embeddings, instances, events, num_events, spec, axis_name):
  """The discriminative loss's share of this device, weighted by ``spec["weight"]``."""
  if embeddings is None or instances is None:
    raise ValueError("instance_loss needs a model that returns (logits, embeddings) (embed_dim > 0) and targets "
                     "{'labels': ..., 'instances': ...} (the collate functions' instances= option).")
  total, present = discriminative_loss(embeddings.reshape(instances.shape[0], -1), instances, events, num_events,
                                       spec["max_instances"], delta_v=spec["delta_v"], delta_d=spec["delta_d"])
  if axis_name is not None:
    present = jax.lax.psum(present, axis_name)
  return spec["weight"] * total / jnp.maximum(present, 1.0)


def make_train_step(graphdef, *, num_classes: int, num_events: int, class_weights=None,
                    ignore_index: int | None = None, forward: Callable = sparse_logits,
                    axis_name: str | None = None, focal_gamma: float = 0.0, instance_loss: dict | None = None):
  """``step(state, x, y) -> (state, loss, confusion int32[K, K])``; the labels are flattened to the rows of the
  logits (so ``[B, N]`` labels of fixed-size clouds work as well as ``[N]``).

  Args:
    graphdef: from ``nnx.split((model, optimizer))`` with the model in training mode.
    num_classes, num_events: static (events per device batch). class_weights, ignore_index, focal_gamma: as in
      :func:`segmentation_loss` (the confusion counts then have the ignored row of :func:`confusion_matrix`).
    forward: ``forward(model, x) -> (logits [N, K], events int [N])``, the event index of each row; or
      ``((logits, embeddings [N, D]), events)`` for a model with an instance head.
    axis_name: None for ``jax.jit``; a name for ``jax.pmap`` (the step is then pmapped over it).
    instance_loss: None, or a dict ``weight, max_instances, delta_v, delta_d`` adding ``weight`` times the
      :func:`discriminative_loss` of the embeddings; ``y`` is then ``{"labels": ..., "instances": ...}``.
  """

  def step(state, x, y):
    labels, instances = _split_targets(y)
    model, optimizer = nnx.merge(graphdef, state if axis_name is None else per_device_keys(state, axis_name))

    def loss_fn(model):
      out, events = forward(model, x)
      logits, embeddings = _split_outputs(out)
      loss = _loss(logits, labels, events, num_events, class_weights, ignore_index, axis_name, focal_gamma)
      if instance_loss is not None:
        loss = loss + _instance_loss(embeddings, instances, events, num_events, instance_loss, axis_name)
      return loss, logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    cm = confusion_matrix(logits, labels, num_classes, ignore_index=ignore_index)
    if axis_name is not None:
      grads = jax.lax.psum(grads, axis_name)
      loss = jax.lax.psum(loss, axis_name)
      cm = jax.lax.psum(cm, axis_name)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats with int32 step counts
      apply_gradients(optimizer, model, grads)
    new_state = nnx.state((model, optimizer))
    if axis_name is not None:  # the replicated keys again: devices stay identical
      new_state = jax.tree.map(lambda new, old: old if _is_key(old) else new, new_state, state)
    return new_state, loss, cm

  if axis_name is None:
    return jax.jit(step, donate_argnums=0)
  return jax.pmap(step, axis_name=axis_name, donate_argnums=0)


def make_eval_step(graphdef, *, num_classes: int, num_events: int, ignore_index: int | None = None,
                   forward: Callable = sparse_logits, axis_name: str | None = None):
  """``step(state, x, labels) -> (loss, confusion)`` with the model in eval mode (running batch-norm averages).

  ``graphdef`` must come from ``nnx.split((model, optimizer))`` taken after ``model.eval()``.
  """

  def step(state, x, y):
    labels, _ = _split_targets(y)
    model, _ = nnx.merge(graphdef, state)
    out, events = forward(model, x)
    logits, _ = _split_outputs(out)
    loss = _loss(logits, labels, events, num_events, None, ignore_index, axis_name)
    cm = confusion_matrix(logits, labels, num_classes, ignore_index=ignore_index)
    if axis_name is not None:
      loss = jax.lax.psum(loss, axis_name)
      cm = jax.lax.psum(cm, axis_name)
    return loss, cm

  if axis_name is None:
    return jax.jit(step)
  return jax.pmap(step, axis_name=axis_name)
