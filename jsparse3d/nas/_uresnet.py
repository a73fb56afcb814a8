"""The elastic sparse U-ResNet: each level's width and each level's depth (blocks per side) are searched."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jsparse3d.models import UResNet
from jsparse3d.models import _unet
from jsparse3d.nas._elastic import Layer
from jsparse3d.nas._elastic import Supernet
from jsparse3d.nas._elastic import level_geometry
from jsparse3d.nas._space import SearchSpace
from jsparse3d.nas._space import Subnet
from jsparse3d.nas._space import scaled_choices


def _block(path, level, index, inputs, shortcut: bool):
  """The layers of a pre-activation block (bn1, conv1, bn2, conv2, shortcut); conv2 closes it."""
  block = (level, index) if index > 0 else None
  g = (level,)
  rows = ("rows", level)
  layers = [Layer((*path, "bn1"), "bn", None, inputs, rows, block=block),
            Layer((*path, "conv1"), "conv", inputs, g, ("subm", level), block=block),
            Layer((*path, "bn2"), "bn", None, g, rows, block=block),
            Layer((*path, "conv2"), "conv", g, g, ("subm", level), block=block, closes=block is not None)]
  if shortcut:
    layers.append(Layer((*path, "shortcut"), "linear", inputs, g, rows))
  return layers


class ElasticUResNet(Supernet):
  """A supernet of :class:`jsparse3d.models.UResNet`: level ``i``'s width is searched among
  ``width_fractions`` of its largest width, and its blocks (the same count on the encoder and decoder sides) from 1
  to ``reps``.

  A subnet has ``depth`` widths (one per level) and ``depth`` depths. :meth:`export` gives a ``UResNet`` with
  ``filters=widths`` and ``reps=depths``.

  Args:
    in_features, num_classes, filters, depth, reps, spatial_dims, dtype, param_dtype: of the largest U-ResNet, as
      in :class:`jsparse3d.models.UResNet`.
    width_fractions: the width choices of every level, as fractions of its largest width.
    seed, sampling: how training draws subnets (see :class:`Supernet`).

  Example:
    >>> supernet = jsparse3d.nas.ElasticUResNet(in_features=32, filters=4, depth=2, reps=2, rngs=nnx.Rngs(0))
    >>> sub = supernet.space.smallest()
    >>> sub
    Subnet(widths=(2, 4), depths=(1, 1))
    >>> small = supernet.export(sub)           # a jsparse3d.models.UResNet(filters=[2, 4], reps=[1, 1])
    >>> bool(jnp.allclose(supernet(x, subnet=sub).feats, small(x).feats, atol=1e-5))
    True
  """

  def __init__(self, in_features: int = 1, num_classes: int = 5, filters=16, depth: int = 5, reps=2, *,
               width_fractions=(0.5, 0.75, 1.0), spatial_dims: int = 3, seed: int = 0, sampling: str = "uniform",
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    widths = _unet.per_level(filters, depth, "filters", lambda f, i: f * (i + 1))
    blocks = _unet.per_level(reps, depth, "reps", lambda n, i: n)
    self.in_features, self.num_classes, self.spatial_dims = in_features, num_classes, spatial_dims
    self.kernels = _unet.kernels(spatial_dims)
    net = UResNet(in_features, num_classes, widths, depth, blocks, spatial_dims=spatial_dims, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)
    space = SearchSpace(tuple(scaled_choices(w, width_fractions) for w in widths),
                        tuple(tuple(range(1, b + 1)) for b in blocks),
                        tuple(f"level {i}" for i in range(depth)), tuple(f"level {i}" for i in range(depth)))
    layers = [Layer(("stem",), "conv", None, (0,), ("subm", 0))]
    for i in range(depth):
      for r in range(blocks[i]):
        layers += _block(("encoder", i, r), i, r, (i,), shortcut=False)
    for i in range(depth - 1):
      layers += [Layer(("down_bn", i), "bn", None, (i,), ("rows", i)),
                 Layer(("down", i), "conv", (i,), (i + 1,), ("down", i)),
                 Layer(("up_bn", i), "bn", None, (i + 1,), ("rows", i + 1)),
                 Layer(("up", i), "conv", (i + 1,), (i,), ("up", i))]
      for r in range(blocks[i]):
        layers += _block(("decoder", i, r), i, r, (i, i) if r == 0 else (i,), shortcut=r == 0)
    layers += [Layer(("head_bn",), "bn", None, (0,), ("rows", 0)),
               Layer(("head",), "linear", (0,), None, ("rows", 0))]
    self._init_supernet(net, space, layers, seed=seed, sampling=sampling)

  def plain_config(self, subnet: Subnet) -> dict:
    return dict(in_features=self.in_features, num_classes=self.num_classes, filters=list(subnet.widths),
                depth=len(subnet.widths), reps=list(subnet.depths), spatial_dims=self.spatial_dims)

  def levels(self, x) -> tuple[dict, dict]:
    """``(geometry, inputs)`` of a batch (see :meth:`Supernet.levels`); ``x``: the batch's SparseTensor (its
    planned capacities are used, as the model uses them)."""
    return level_geometry(x, len(self.space.width_choices), self.kernels.conv, self.kernels.down)
