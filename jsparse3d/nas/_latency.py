"""Latency on this machine: a per-layer table built once, its predictions, and end-to-end measurements to check
them.

The table times every layer the search space can make (each conv, norm and linear layer at each of its channel
choices, on the geometry of one reference batch) as a compiled forward of the plain layer, once. A subnet's
predicted latency is the sum over the layers it keeps, times a scale, plus a constant for what no layer owns (kernel
maps, voxelization, activations, additions), both fitted to the end-to-end latency of a few subnets measured on
their exports (:meth:`LatencyTable.calibrate`). The error on other measured subnets says how far to trust it.
"""

from __future__ import annotations

import itertools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsparse3d import nn
from jsparse3d._sparse_tensor import SparseTensor
from jsparse3d.nas._elastic import Layer
from jsparse3d.nas._elastic import Supernet
from jsparse3d.nas._space import Subnet


def timed(fn, *args, repeats: int = 5) -> float:
  """Median seconds of ``repeats`` calls of a compiled ``fn(*args)`` after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure_latency(model: nnx.Module, inputs: tuple, *, repeats: int = 5) -> float:
  """Median seconds of one jitted forward ``model(*inputs)`` in eval mode (compiled first, not timed)."""
  model = nnx.clone(model)
  model.eval()
  graph, state = nnx.split(model)
  fn = jax.jit(lambda s, xs: nnx.merge(graph, s)(*xs)).lower(state, inputs).compile()
  return timed(fn, state, inputs, repeats=repeats)


def _random_state(module: nnx.Module, seed: int):
  """``module`` (abstract, from eval_shape) with random weights, unit variances: what timing needs."""
  graph, state = nnx.split(module)
  rng = np.random.default_rng(seed)
  def fill(path, v):
    if not jnp.issubdtype(v.dtype, jnp.floating):
      return jnp.zeros(v.shape, v.dtype)
    x = rng.standard_normal(v.shape).astype(v.dtype) * 0.05
    return jnp.asarray(np.abs(x) + 1 if str(getattr(path[-1], "key", "")) == "var" else x)
  pure = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  return graph, state


class LatencyTable:
  """Forward latency of every layer choice of ``supernet`` on one reference batch (``inputs``: the model's
  positional inputs), and the predicted latency of a subnet.

  Args:
    supernet: a :class:`Supernet`. inputs: a tuple of the model's inputs (one batch). repeats: timed calls per
      entry (median).

  Example:
    >>> supernet = jsparse3d.nas.ElasticUResNet(in_features=32, filters=4, depth=2, reps=1, rngs=nnx.Rngs(0))
    >>> table = jsparse3d.nas.LatencyTable(supernet, (x,), repeats=1)
    >>> fit = (supernet.space.largest(), supernet.space.smallest())
    >>> _ = table.calibrate({s: jsparse3d.nas.measure_latency(supernet.export(s), (x,)) for s in fit})
    >>> table.predict(supernet.space.smallest()) > 0           # seconds
    True
  """

  def __init__(self, supernet: Supernet, inputs: tuple, *, repeats: int = 5):
    self.supernet, self.scale, self.overhead = supernet, 1.0, 0.0
    _, self._inputs = supernet.levels(*inputs)
    self._params = {layer.path: self._template(layer) for layer in supernet.layers}
    self.entries: dict = {}
    space = supernet.space
    width_sets = lambda genes, full: [full] if genes is None else sorted(
        {sum(pick[genes.index(g)] for g in genes) for pick in itertools.product(*[space.width_choices[g]
                                                                                for g in genes])})
    for layer, (full_in, full_out) in zip(supernet.layers, supernet.full_channels):
      template = self._params[layer.path]
      outs = width_sets(layer.outputs, full_out)
      pairs = [(c, c) for c in outs] if layer.kind == "bn" else itertools.product(width_sets(layer.inputs, full_in),
                                                                                 outs)
      for cin, cout in pairs:
        key = self._key(layer, cin, cout)
        if key not in self.entries:
          self.entries[key] = self._time(layer, template, cin, cout, repeats)

  def _template(self, layer: Layer):
    module = self.supernet.net
    for part in layer.path:
      module = module[part] if isinstance(part, int) else getattr(module, part)
    return module

  def _key(self, layer: Layer, cin: int, cout: int):
    t = self._params[layer.path]
    shape = tuple(np.shape(t.kernel[...])[:3]) if layer.kind == "conv" else ()
    return (layer.kind, type(t).__name__, layer.work, shape, cin, cout)

  def _time(self, layer: Layer, t, cin: int, cout: int, repeats: int) -> float:
    if layer.kind == "conv":
      cls = type(t)
      build = lambda: cls(cin, cout, tuple(np.shape(t.kernel[...])[:3]), stride=t.stride, dilation=t.dilation,
                          use_bias=t.bias is not None, rngs=nnx.Rngs(0))
    elif layer.kind == "bn":
      build = lambda: nn.BatchNorm(cin, relu=t.relu, rngs=nnx.Rngs(0))
    else:
      build = lambda: nn.Linear(cin, cout, use_bias=t.linear.bias is not None, rngs=nnx.Rngs(0))
    module = nnx.eval_shape(build)
    module.eval()
    graph, state = _random_state(module, seed=cin * 7919 + cout)
    where = self._inputs[layer.work]
    rng = np.random.default_rng(cin)
    if isinstance(where, SparseTensor):
      x = where.replace(feats=jnp.asarray(rng.standard_normal((where.capacity, cin)), jnp.float32))
      fn = jax.jit(lambda s, x: nnx.merge(graph, s)(x).feats)
      return timed(fn, state, x, repeats=repeats)
    feats = jnp.asarray(rng.standard_normal((where.shape[0], cin)), jnp.float32)  # points: where is their mask
    fn = jax.jit(lambda s, f, m: nnx.merge(graph, s)(f, mask=m))
    return timed(fn, state, feats, where, repeats=repeats)

  def layer_sum(self, subnet: Subnet) -> float:
    """Seconds of the table's entries for the layers ``subnet`` keeps."""
    return float(sum(self.entries[self._key(layer, cout if layer.kind == "bn" else cin, cout)]
                     for layer, cin, cout in self.supernet.active_layers(subnet)))

  def calibrate(self, measured: dict) -> tuple[float, float]:
    """Fits ``predict(s) = scale * layer_sum(s) + overhead`` to ``measured`` (subnet -> seconds, from
    :func:`measure_latency` of their exports) by least squares; with one subnet only the overhead is fitted (scale
    1). Layers timed alone carry their own dispatch and miss what runs between them, hence the two constants.
    Returns ``(scale, overhead)``."""
    if not measured:
      raise ValueError("calibrate needs at least one measured subnet (subnet -> seconds).")
    sums = np.array([self.layer_sum(s) for s in measured])
    times = np.array(list(measured.values()), np.float64)
    if len(measured) == 1 or np.ptp(sums) == 0:
      self.scale, self.overhead = 1.0, float(np.mean(times - sums))
    else:
      self.scale, self.overhead = (float(v) for v in np.polyfit(sums, times, 1))
    return self.scale, self.overhead

  def predict(self, subnet: Subnet) -> float:
    """Predicted seconds of one forward of ``subnet``'s export on the reference batch."""
    return self.scale * self.layer_sum(subnet) + self.overhead
