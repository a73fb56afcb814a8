"""Train and eval step builders for a Flax NNX model and an optax optimizer, jitted or pmapped.

The steps are pure functions of ``state = nnx.state((model, optimizer))``: they merge it with a graph definition,
run, and return the new state, so the same code runs under ``jax.jit`` (one device) and ``jax.pmap`` (gradients
averaged with ``lax.pmean``; build the model's BatchNorms with the same ``axis_name`` to synchronise their
statistics across devices).
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from jsparse3d.training._losses import segmentation_loss
from jsparse3d.training._metrics import confusion_matrix


def sparse_logits(model, x):
  """The default forward: per-voxel logits of a model that maps a SparseTensor to a SparseTensor."""
  return model(x).feats


def make_train_step(graphdef, *, num_classes: int, num_events: int, class_weights=None,
                    forward: Callable = sparse_logits, axis_name: str | None = None):
  """``step(state, x, labels) -> (state, loss, confusion int32[K, K])``.

  Args:
    graphdef: from ``nnx.split((model, optimizer))`` with the model in training mode.
    num_classes, num_events: static (events per device batch). class_weights: as in :func:`segmentation_loss`.
    forward: ``forward(model, x) -> logits [N, K]``; events are read from ``x.coords[:, 0]``.
    axis_name: None for ``jax.jit``; a name for ``jax.pmap`` (the step is then pmapped over it).
  """

  def step(state, x, labels):
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model):
      logits = forward(model, x)
      loss = segmentation_loss(logits, labels, x.coords[:, 0], num_events, class_weights=class_weights)
      return loss, logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    cm = confusion_matrix(logits, labels, num_classes)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      loss = jax.lax.pmean(loss, axis_name)
      cm = jax.lax.psum(cm, axis_name)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats with int32 step counts
      optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss, cm

  if axis_name is None:
    return jax.jit(step, donate_argnums=0)
  return jax.pmap(step, axis_name=axis_name, donate_argnums=0)


def make_eval_step(graphdef, *, num_classes: int, num_events: int, forward: Callable = sparse_logits,
                   axis_name: str | None = None):
  """``step(state, x, labels) -> (loss, confusion)`` with the model in eval mode (running batch-norm averages).

  ``graphdef`` must come from ``nnx.split((model, optimizer))`` taken after ``model.eval()``.
  """

  def step(state, x, labels):
    model, _ = nnx.merge(graphdef, state)
    logits = forward(model, x)
    loss = segmentation_loss(logits, labels, x.coords[:, 0], num_events)
    cm = confusion_matrix(logits, labels, num_classes)
    if axis_name is not None:
      loss = jax.lax.pmean(loss, axis_name)
      cm = jax.lax.psum(cm, axis_name)
    return loss, cm

  if axis_name is None:
    return jax.jit(step)
  return jax.pmap(step, axis_name=axis_name)
