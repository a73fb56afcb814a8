"""Weight sharing by masks: a supernet is the plain model at its largest widths and depths, and a subnet is that
model with some channels and blocks masked off.

Every conv, batch norm and linear layer of the plain model is listed once (:class:`Layer`): which width genes make
its input and output channels (the first ``w`` channels of a gene are its active ones, as SPVNAS slices them), and
which block it closes, if any. Running a subnet multiplies the weights by 0/1 masks before the plain forward runs:

- inactive channels get zero weights, so they stay exactly zero through every conv, norm (scale and bias masked)
  and activation, and add nothing downstream;
- a dropped block is one whose last layer (the conv or the norm that closes its residual branch) is masked to zero,
  so the block returns its input unchanged.

The masks are computed from two small int arrays (widths, depths) inside the compiled step, so every subnet runs in
the same program: one compilation trains them all, one evaluates them all. The price is that a subnet costs the
largest one's time in the supernet; its own speed is that of its export, a plain model of its sliced weights
(:meth:`Supernet.export`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsparse3d import ops
from jsparse3d.nas._space import SearchSpace
from jsparse3d.nas._space import Subnet


@dataclasses.dataclass(frozen=True)
class Layer:
  """One conv, batch norm or linear layer of the supernet's plain model.

  Attributes:
    path: the module's path in the plain model (``("encoder", 2, 1, "conv2")``).
    kind: ``"conv"``, ``"bn"`` or ``"linear"``.
    inputs, outputs: the width genes whose channels, concatenated in this order, are the layer's input and output
      channels; None where the layer always takes (or gives) all of them (the input features, the classes).
    work: the geometry key of the kernel-map pairs or rows it runs over (see :meth:`Supernet.levels`).
    block: ``(stage, index)`` if the layer belongs to a block that can be dropped (``index >= depths[stage]``).
    closes: the layer closes that block's residual branch: dropping the block masks its weights to zero.
  """
  path: tuple
  kind: str
  inputs: tuple | None
  outputs: tuple | None
  work: tuple
  block: tuple | None = None
  closes: bool = False

  def kept(self, depths) -> bool:
    return self.block is None or self.block[1] < depths[self.block[0]]


class Draws(nnx.Variable):
  """How many subnets the supernet has drawn: with the seed, it fixes the next draw (and is checkpointed with it)."""


def _flat(tree) -> dict:
  return {tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _set(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree[key]
  tree[path[-1]] = value


class Supernet(nnx.Module):
  """A plain model at its largest configuration, runnable at any subnet of its search space.

  ``__call__(*inputs, subnet=None)`` takes the plain model's inputs. ``subnet`` is a :class:`Subnet`, or a pair
  ``(widths int32[G], depths int32[S])`` of arrays (what a compiled step takes, so that it is not specialised to one
  subnet; :meth:`arrays` makes them). Without one, training mode draws a subnet per call, uniformly from the space
  (``sampling="sandwich"``: every fourth call the largest, the next the smallest), from ``seed`` and a draw counter
  kept in the module's state, so the draws are the same on every device of a ``pmap`` and after a resume; eval mode
  runs the largest subnet.

  Subclasses build ``self.net`` (the plain model), ``self.space`` and ``self.layers`` and say how a subnet becomes
  the plain model's arguments (:meth:`plain_config`) and how to measure an input's geometry (:meth:`geometry`).
  """

  sampling_kinds = ("uniform", "sandwich")

  def _init_supernet(self, net, space: SearchSpace, layers, *, seed: int, sampling: str):
    if sampling not in self.sampling_kinds:
      raise ValueError(f"sampling must be one of {self.sampling_kinds}, got {sampling!r}.")
    self.net, self.space, self.layers = net, space, tuple(layers)
    self.seed, self.sampling, self.deterministic = int(seed), sampling, False
    self.draws = Draws(jnp.zeros((), jnp.uint32))
    params = _flat(nnx.to_pure_dict(nnx.state(net, nnx.Param)))
    def full(layer):  # the largest input and output channels: a kernel's last two axes, a norm's one
      shape = next(np.shape(v) for p, v in params.items() if p[:len(layer.path)] == layer.path and
                   p[-1] in ("kernel", "scale"))
      return (shape[-2], shape[-1]) if len(shape) >= 2 else (shape[-1], shape[-1])
    self.full_channels = tuple(full(layer) for layer in self.layers)

  # -- running a subnet -----------------------------------------------------------------------------------------

  def arrays(self, subnet: Subnet) -> tuple[jax.Array, jax.Array]:
    """``(widths int32[G], depths int32[S])`` of a checked subnet: the form a compiled step takes."""
    self.space.check(subnet)
    return jnp.asarray(subnet.widths, jnp.int32), jnp.asarray(subnet.depths, jnp.int32)

  def __call__(self, *inputs, subnet=None, **kwargs):
    if isinstance(subnet, Subnet):
      widths, depths = self.arrays(subnet)
    elif subnet is not None:
      widths, depths = subnet
    elif self.deterministic:
      widths, depths = self.arrays(self.space.largest())
    else:
      widths, depths = self._draw()
    graph, params, rest = nnx.split(self.net, nnx.Param, ...)
    pure = nnx.to_pure_dict(params)
    flat = _flat(pure)
    for path, mask in self._masks(widths, depths, flat).items():
      _set(pure, path, flat[path] * mask)
    nnx.replace_by_pure_dict(params, pure)
    # Batch statistics move on for the channels and blocks this subnet runs only: an inactive channel's statistics
    # (zero) would drag the running averages of the subnets that use it.
    before = _flat(nnx.to_pure_dict(nnx.state(self.net, nnx.BatchStat)))
    net = nnx.merge(graph, params, rest)
    out = net(*inputs, **kwargs)
    after = nnx.state(net, nnx.BatchStat)
    stats = nnx.to_pure_dict(after)
    moved = _flat(stats)
    for path, keep in self._kept_statistics(widths, depths, before).items():
      _set(stats, path, jnp.where(keep, moved[path], before[path]))
    nnx.replace_by_pure_dict(after, stats)
    nnx.update(self.net, nnx.state(net, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat))), after)  # and RNG counts
    return out

  def _draw(self):
    count = self.draws[...]
    self.draws.set_value(count + 1)
    key = jax.random.fold_in(jax.random.key(self.seed), count)
    space = self.space
    choices = space.width_choices + space.depth_choices
    keys = jax.random.split(key, len(choices))
    picks = [jnp.asarray(c, jnp.int32)[jax.random.randint(k, (), 0, len(c))] for k, c in zip(keys, choices)]
    widths, depths = jnp.stack(picks[:len(space.width_choices)]), jnp.stack(picks[len(space.width_choices):])
    if self.sampling == "sandwich":
      phase = count % 4
      big, small = self.arrays(space.largest()), self.arrays(space.smallest())
      widths = jnp.where(phase == 0, big[0], jnp.where(phase == 1, small[0], widths))
      depths = jnp.where(phase == 0, big[1], jnp.where(phase == 1, small[1], depths))
    return widths, depths

  def masks(self, subnet: Subnet) -> dict:
    """Parameter path (``("down", 1, "kernel")``) -> ``subnet``'s 0/1 mask of that parameter, at its shape: what
    running ``subnet`` multiplies the weights by."""
    widths, depths = self.arrays(subnet)
    params = _flat(nnx.to_pure_dict(nnx.state(self.net, nnx.Param)))
    return {path: np.broadcast_to(np.asarray(m), np.shape(params[path]))
            for path, m in self._masks(widths, depths, params).items()}

  def _active(self, genes, widths):
    """bool mask of the active channels of ``genes`` concatenated: the first ``widths[g]`` of each."""
    top = self.space.max_widths
    return jnp.concatenate([jnp.arange(top[g]) < widths[g] for g in genes])

  def _kept_statistics(self, widths, depths, stats: dict) -> dict:
    """Batch-statistic path -> bool mask of the channels whose running averages this subnet updates."""
    out = {}
    for layer in self.layers:
      if layer.kind != "bn":
        continue
      keep = self._active(layer.outputs, widths)
      if layer.block is not None:
        keep = keep & (layer.block[1] < depths[layer.block[0]])
      out.update({p: keep for p in stats if p[:len(layer.path)] == layer.path})
    return out

  def _masks(self, widths, depths, params: dict) -> dict:
    """Parameter path -> 0/1 mask (broadcastable to it) of every masked parameter."""
    def channels(genes, size, dtype):
      return jnp.ones((size,), dtype) if genes is None else self._active(genes, widths).astype(dtype)
    out = {}
    for layer in self.layers:
      leaves = {p: v for p, v in params.items() if p[:len(layer.path)] == layer.path}
      for path, value in leaves.items():
        name = path[len(layer.path):]
        gate = (layer.block[1] < depths[layer.block[0]]).astype(value.dtype) if layer.closes else 1.0
        if name[-1] == "kernel":
          mask = (channels(layer.inputs, value.shape[-2], value.dtype)[:, None] *
                  channels(layer.outputs, value.shape[-1], value.dtype)[None, :])
          mask = mask.reshape((1,) * (value.ndim - 2) + mask.shape)
        else:  # a bias or a norm's scale and bias: per output channel
          mask = channels(layer.outputs, value.shape[-1], value.dtype)
        out[path] = mask * gate
    return out

  # -- exporting a subnet ---------------------------------------------------------------------------------------

  def plain_config(self, subnet: Subnet) -> dict:
    """The plain model's keyword arguments for ``subnet`` (without rngs and dtypes)."""
    raise NotImplementedError

  def plain_class(self):
    return type(self.net)

  def export(self, subnet: Subnet) -> nnx.Module:
    """A standalone plain model of ``subnet``: the supernet's weights and batch statistics sliced to its widths,
    its dropped blocks left out. Its outputs equal the supernet's at ``subnet`` (to float32 rounding); recalibrate
    the statistics first (:func:`jsparse3d.nas.recalibrate`) if the supernet was trained on many subnets. It is in
    the supernet's mode (train or eval). Save it with :func:`jsparse3d.nn.save_weights`; train it as any model.
    """
    self.space.check(subnet)
    cls, config = self.plain_class(), self.plain_config(subnet)
    abstract = nnx.eval_shape(lambda: cls(**config, rngs=nnx.Rngs(0)))
    graph, like = nnx.split(abstract)
    pure = nnx.to_pure_dict(like)
    source = _flat(nnx.to_pure_dict(nnx.state(self.net)))
    by_path = {layer.path: layer for layer in self.layers}
    for path, shape in _flat(pure).items():
      layer = next((by_path[path[:n]] for n in range(len(path), 0, -1) if path[:n] in by_path), None)
      value = source[path]
      if layer is not None:
        value = jnp.asarray(self._slice(layer, path[len(layer.path):], np.asarray(value), subnet), shape.dtype)
      if value.shape != tuple(shape.shape):
        raise AssertionError(f"export of {path}: sliced {value.shape}, the plain model wants {shape.shape}")
      _set(pure, path, value)
    nnx.replace_by_pure_dict(like, pure)
    model = nnx.merge(graph, like)
    model.set_attributes(deterministic=self.deterministic, use_running_average=self.deterministic,
                         raise_if_not_found=False)
    return model

  def _slice(self, layer: Layer, name: tuple, value: np.ndarray, subnet: Subnet) -> np.ndarray:
    top = self.space.max_widths
    def rows(genes, size):
      if genes is None:
        return np.arange(size)
      offsets = np.concatenate([[0], np.cumsum([top[g] for g in genes])])
      return np.concatenate([offsets[i] + np.arange(subnet.widths[g]) for i, g in enumerate(genes)])
    if name[-1] == "kernel":
      value = np.take(value, rows(layer.inputs, value.shape[-2]), axis=-2)
    return np.take(value, rows(layer.outputs, value.shape[-1]), axis=-1)

  # -- cost -----------------------------------------------------------------------------------------------------

  def levels(self, *inputs) -> tuple[dict, dict]:
    """``(geometry, inputs)`` of one batch of the model's inputs, computed eagerly: geometry key -> the rows or
    kernel-map pairs its layers run over (``("subm", l)``, ``("down", l)``, ``("up", l)``, ``("rows", l)`` of
    voxel level ``l``, ...), and geometry key -> what such a layer takes (the level's tensor, its maps cached)."""
    raise NotImplementedError

  def geometry(self, *inputs) -> dict:
    """The first half of :meth:`levels`: what :meth:`macs` counts over (sum it over batches for a dataset)."""
    return self.levels(*inputs)[0]

  def macs(self, subnet: Subnet, geometry: dict) -> int:
    """MACs of ``subnet`` on inputs of ``geometry`` (from :meth:`geometry`, or its sum over batches): each conv
    counts its kernel map's real pairs times its active input and output channels, each linear layer its valid
    rows, as :func:`jsparse3d.nn.count_macs` counts the exported model."""
    self.space.check(subnet)
    total = 0
    for layer, cin, cout in self.active_layers(subnet):
      if layer.kind != "bn":
        total += geometry[layer.work] * cin * cout
    return int(total)

  def active_layers(self, subnet: Subnet):
    """``(layer, input channels, output channels)`` of every layer ``subnet`` keeps."""
    width = lambda genes, full: full if genes is None else sum(subnet.widths[g] for g in genes)
    for layer, (full_in, full_out) in zip(self.layers, self.full_channels):
      if not layer.kept(subnet.depths):
        continue
      yield layer, width(layer.inputs, full_in), width(layer.outputs, full_out)


def level_geometry(x, depth: int, conv, down) -> tuple[dict, dict]:
  """:meth:`Supernet.levels` of a U-Net's voxel levels: ``depth`` levels from ``x``, submanifold maps of kernel
  ``conv`` on each, strided maps of kernel and stride ``down`` between them."""
  geometry, inputs = {}, {}
  for i in range(depth):
    kmap, x = ops.kernel_map(x, conv)
    geometry[("subm", i)], geometry[("rows", i)] = int(kmap.num_pairs), int(x.num_valid)
    inputs[("subm", i)] = inputs[("rows", i)] = x
    if i < depth - 1:
      kmap, coarse = ops.kernel_map(x, down, stride=down)
      geometry[("down", i)] = geometry[("up", i)] = int(kmap.num_pairs)
      inputs[("down", i)], inputs[("up", i)] = x, coarse
      x = coarse
  return geometry, inputs
