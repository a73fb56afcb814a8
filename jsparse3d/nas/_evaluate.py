"""Scoring a subnet of a trained supernet: batch-norm recalibration on training batches, then held-out metrics.

A supernet trained on many subnets has running batch-norm averages of none of them, so each subnet's statistics
are recomputed before it is scored (as OFA and SPVNAS do): its batch statistics on a few training batches,
averaged. Both steps take the subnet as arrays, so each compiles once per batch shape for every subnet.
"""

from __future__ import annotations

import functools
from typing import Callable
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsparse3d.nas._elastic import Supernet
from jsparse3d.nas._space import Subnet
from jsparse3d.training import _metrics
from jsparse3d.training import _steps

METRICS = ("nonzero_accuracy", "miou")


class SubnetEvaluator:
  """Recalibrates and scores subnets of ``supernet``; results are cached per subnet.

  Args:
    supernet: a trained :class:`Supernet` (its state is read, not changed).
    calibration: training-set model inputs (no labels): the batches whose statistics each subnet takes.
    validation: ``(inputs, labels)`` held-out batches scored for each subnet.
    num_classes: classes of the labels. metric: ``"nonzero_accuracy"`` (LArTPC) or ``"miou"`` (LiDAR).
    forward: ``forward(model, inputs) -> (logits [N, K], events [N])`` as in
      :func:`jsparse3d.training.make_train_step` (default: a model that maps a SparseTensor to a SparseTensor).
    ignore_index: the label that is not scored (SemanticKITTI's 255), or None.

  Example:
    >>> supernet = jsparse3d.nas.ElasticUResNet(in_features=32, filters=4, depth=2, rngs=nnx.Rngs(0))
    >>> labels = jnp.where(jnp.arange(x.capacity) < x.num_valid, 1, -1)      # -1: padding
    >>> evaluator = jsparse3d.nas.SubnetEvaluator(supernet, calibration=[x], validation=[(x, labels)],
    ...                                           num_classes=5)
    >>> 0 <= evaluator(supernet.space.smallest()) <= 1
    True
  """

  def __init__(self, supernet: Supernet, *, calibration: Sequence, validation: Sequence, num_classes: int,
               metric: str = "nonzero_accuracy", forward: Callable = _steps.sparse_logits,
               ignore_index: int | None = None):
    if metric not in METRICS:
      raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    if not calibration or not validation:
      raise ValueError("SubnetEvaluator needs at least one calibration batch and one validation batch.")
    self.supernet, self.metric, self.num_classes = supernet, metric, num_classes
    self.calibration, self.validation, self.ignore_index = list(calibration), list(validation), ignore_index
    self.cache: dict[Subnet, dict] = {}
    # Batch shapes met: each compiles the two steps once, whatever the number of subnets scored.
    self.batch_shapes: set = set()
    model = nnx.clone(supernet)
    model.eval()
    self._eval_graph, self._state = nnx.split(model)
    model.set_attributes(use_running_average=False)  # batch statistics; dropout and the draws stay off
    for _, m in nnx.iter_modules(model):
      if isinstance(m, nnx.BatchNorm):
        m.momentum = 0.0  # the running average becomes this batch's statistics
    self._stats_graph, _ = nnx.split(model)

    @jax.jit
    def batch_stats(state, x, widths, depths):
      m = nnx.merge(self._stats_graph, state)
      forward(functools.partial(m, subnet=(widths, depths)), x)
      return nnx.state(m, nnx.BatchStat)

    @jax.jit
    def counts(state, x, labels, widths, depths):
      m = nnx.merge(self._eval_graph, state)
      logits, _ = forward(functools.partial(m, subnet=(widths, depths)), x)
      return _metrics.confusion_matrix(logits, labels.reshape(-1), num_classes, ignore_index=ignore_index)

    self._batch_stats, self._counts = batch_stats, counts

  def statistics(self, subnet: Subnet):
    """The subnet's batch-norm statistics: the mean over the calibration batches of their batch statistics."""
    widths, depths = self.supernet.arrays(subnet)
    total = None
    for x in self.calibration:
      self.batch_shapes.add(_shape(x))
      stats = jax.tree.map(lambda v: np.asarray(v, np.float64), self._batch_stats(self._state, x, widths, depths))
      total = stats if total is None else jax.tree.map(np.add, total, stats)
    n = len(self.calibration)
    like = nnx.state(self._state, nnx.BatchStat)
    return jax.tree.map(lambda s, ref: jnp.asarray(s / n, ref.dtype), total, like)

  def recalibrated(self, subnet: Subnet) -> Supernet:
    """A copy of the supernet (eval mode) holding ``subnet``'s recalibrated statistics: export it from here."""
    model = nnx.merge(self._eval_graph, self._state)
    nnx.update(model, self.statistics(subnet))
    return model

  def __call__(self, subnet: Subnet) -> float:
    """The metric of ``subnet`` on the validation batches, after recalibration (cached)."""
    return self.scores(subnet)[self.metric]

  def scores(self, subnet: Subnet) -> dict:
    """``{"nonzero_accuracy", "miou"}`` of ``subnet`` (cached)."""
    if subnet not in self.cache:
      widths, depths = self.supernet.arrays(subnet)
      state = nnx.merge_state(self._state, self.statistics(subnet))
      cm = _metrics.ConfusionMatrix(self.num_classes)
      for x, y in self.validation:
        self.batch_shapes.add(_shape(x))
        cm.add(self._counts(state, x, y, widths, depths))
      self.cache[subnet] = {"nonzero_accuracy": cm.nonzero_accuracy(), "miou": cm.miou()}
    return self.cache[subnet]


def _shape(x):
  return jax.tree.structure(x), tuple(np.shape(v) for v in jax.tree.leaves(x))
