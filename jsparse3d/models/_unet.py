"""The U-Net driver shared by the sparse U-ResNet and its dense twin: one topology, two sets of layers.

Level ``i`` has ``filters * (i + 1)`` channels (or ``filters[i]`` when ``filters`` lists them). The encoder runs
``reps`` blocks per level (or ``reps[i]``) and goes down through
a norm-activation and a stride-2 conv; the decoder comes up through a norm-activation and a stride-2 transposed
conv, concatenates the skip (skip first) and runs ``reps`` blocks, the first of which takes both halves. A stem
conv comes first, a norm-activation and a linear head last. The modules are built in that order (which fixes the
order of their random draws and of their parameters) under the same attribute names for both twins.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import nnx


@dataclasses.dataclass(frozen=True)
class Layers:
  """Constructors of one twin's layers, each ``(in_channels, out_channels) -> module`` (``norm``: ``(channels)``)."""
  stem: Callable
  block: Callable
  norm: Callable
  down: Callable
  up: Callable
  head: Callable


@dataclasses.dataclass(frozen=True)
class Kernels:
  """Kernel sizes of one layout: ``conv`` for the stem and blocks, ``down`` for the strided convs (also their
  stride). Sparse layers take them as given; dense ones keep the first ``dims`` entries."""
  dims: int
  conv: tuple
  down: tuple


def kernels(spatial_dims: int) -> Kernels:
  """3D cubes, or the 2D layout on a flat z axis (3x3x1 convolutions, 2x2x1 strides)."""
  if spatial_dims not in (2, 3):
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
  flat = spatial_dims == 2
  return Kernels(spatial_dims, (3, 3, 1) if flat else (3, 3, 3), (2, 2, 1) if flat else (2, 2, 2))


# The layers in the order they are built: the order of their random draws and of a PyTorch state dict's entries.
# A model built here declares it (``state_dict_order = ORDER``): nnx rebuilds modules with their attributes sorted by
# name, and the build order cannot be read from this driver's caller (jsparse3d.nn._weights).
ORDER = ("stem", "encoder", "down_bn", "down", "up_bn", "up", "decoder", "head_bn", "head")


def per_level(value, depth: int, name: str, default) -> list[int]:
  """``value`` as one positive int per level: a sequence of ``depth`` ints, or an int that ``default(value, i)``
  turns into level ``i``'s."""
  if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
    raise ValueError(f"depth must be a positive int, got {depth!r}.")
  if isinstance(value, (list, tuple)):
    if len(value) != depth:
      raise ValueError(f"{name} lists {len(value)} levels but depth is {depth}; give one value per level or one int.")
    levels = [int(v) for v in value]
  else:
    levels = [default(int(value), i) for i in range(depth)]
  if min(levels) < 1:
    raise ValueError(f"{name} must be positive on every level, got {value!r}.")
  return levels


def build(module: nnx.Module, layers: Layers, in_features: int, num_classes: int, filters, depth: int,
          reps) -> None:
  """Sets ``module``'s layers, in the order of :data:`ORDER`. ``filters`` and ``reps``: an int, or one per level."""
  c = per_level(filters, depth, "filters", lambda f, i: f * (i + 1))
  r = per_level(reps, depth, "reps", lambda n, i: n)
  module.depth = depth
  module.stem = layers.stem(in_features, c[0])
  module.encoder = nnx.List([nnx.List([layers.block(c[i], c[i]) for _ in range(r[i])]) for i in range(depth)])
  module.down_bn = nnx.List([layers.norm(c[i]) for i in range(depth - 1)])
  module.down = nnx.List([layers.down(c[i], c[i + 1]) for i in range(depth - 1)])
  module.up_bn = nnx.List([layers.norm(c[i + 1]) for i in range(depth - 1)])
  module.up = nnx.List([layers.up(c[i + 1], c[i]) for i in range(depth - 1)])
  module.decoder = nnx.List([nnx.List([layers.block(2 * c[i] if j == 0 else c[i], c[i]) for j in range(r[i])])
                             for i in range(depth - 1)])
  module.head_bn = layers.norm(c[0])
  module.head = layers.head(c[0], num_classes)


def apply(module: nnx.Module, x, *, norm_act: Callable, cat: Callable):
  """The forward pass of a module set up by :func:`build`; ``norm_act(norm, x)`` applies a norm module with its
  activation, ``cat(skip, x)`` joins a skip and the upsampled features along channels."""
  x = module.stem(x)
  skips = []
  for i in range(module.depth):
    for block in module.encoder[i]:
      x = block(x)
    if i < module.depth - 1:
      skips.append(x)
      x = module.down[i](norm_act(module.down_bn[i], x))
  for i in reversed(range(module.depth - 1)):
    x = module.up[i](norm_act(module.up_bn[i], x))
    x = cat(skips[i], x)
    for block in module.decoder[i]:
      x = block(x)
  return module.head(norm_act(module.head_bn, x))
