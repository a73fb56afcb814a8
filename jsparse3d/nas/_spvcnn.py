"""The elastic SPVCNN of SPVNAS: each stage's width and each stage's residual-block count are searched."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jsparse3d import ops
from jsparse3d.models import SPVCNN
from jsparse3d.models import _minkunet
from jsparse3d.nas._elastic import Layer
from jsparse3d.nas._elastic import Supernet
from jsparse3d.nas._elastic import level_geometry
from jsparse3d.nas._space import SearchSpace
from jsparse3d.nas._space import Subnet
from jsparse3d.nas._space import scaled_choices

_STAGES = ("down 1", "down 2", "down 3", "down 4", "up 1", "up 2", "up 3", "up 4")


def _genes(cs) -> list[int]:
  """Width gene of each of the nine widths: a down stage whose first block adds its input unprojected (equal
  largest widths: the stem's and the first stage's at every cr) shares its input's gene, so that every subnet keeps
  that block's shape."""
  gene = [0]
  for i in range(1, 9):
    gene.append(gene[i - 1] if i <= 4 and cs[i] == cs[i - 1] else max(gene) + 1)
  return gene


def _conv_bn(path, inputs, outputs, work, level):
  return [Layer((*path, "conv"), "conv", inputs, outputs, work), Layer((*path, "bn"), "bn", None, outputs, ("rows",
                                                                                                          level))]


def _residual(path, stage, index, inputs, g, level, project: bool):
  """conv1, bn1, conv2, bn2 (which closes the block) and the projection; ``g``: the output gene."""
  block = (stage, index) if index > 0 else None
  out, rows = (g,), ("rows", level)
  layers = [Layer((*path, "conv1"), "conv", inputs, out, ("subm", level), block=block),
            Layer((*path, "bn1"), "bn", None, out, rows, block=block),
            Layer((*path, "conv2"), "conv", out, out, ("subm", level), block=block),
            Layer((*path, "bn2"), "bn", None, out, rows, block=block, closes=block is not None)]
  if project:
    layers += [Layer((*path, "proj"), "conv", inputs, out, rows), Layer((*path, "proj_bn"), "bn", None, out, rows)]
  return layers


class ElasticSPVCNN(Supernet):
  """A supernet of :class:`jsparse3d.models.SPVCNN` (SPVNAS's search space, coarse-grained per stage): the
  widths of the stem and the eight stages, each among ``width_fractions`` of its largest width (the stem and the
  first down stage share one width, since the first block adds its input to its output), and the residual blocks
  of each stage from 1 to ``blocks``. The point branch follows the widths it joins.

  A subnet has 8 widths (stem and down 1, down 2..4, up 1..4) and 8 depths (down 1..4, up 1..4). :meth:`export`
  gives an ``SPVCNN`` with ``channels``, ``blocks`` and ``projections`` set.

  Args:
    in_features, num_classes, cr, dropout, dtype, param_dtype: of the largest SPVCNN. blocks: its residual blocks
      per stage (an int or eight). width_fractions: the width choices. seed, sampling: see :class:`Supernet`.

  Example:
    >>> supernet = jsparse3d.nas.ElasticSPVCNN(cr=0.25, rngs=nnx.Rngs(0))
    >>> xyz = jnp.asarray(np.random.default_rng(0).uniform(0, 40, (500, 3)), jnp.float32)
    >>> batch, feats = jnp.zeros(500, jnp.int32), jnp.ones((500, 4))
    >>> supernet(xyz, batch, feats, subnet=supernet.space.smallest()).shape
    (500, 19)
  """

  def __init__(self, in_features: int = 4, num_classes: int = 19, cr: float = 1.0, *, blocks=2,
               width_fractions=(0.5, 0.75, 1.0), dropout: float = 0.3, seed: int = 0, sampling: str = "uniform",
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    cs = _minkunet.channels(cr)
    counts = _minkunet._stage_counts(blocks)
    gene = _genes(cs)
    self.in_features, self.num_classes, self.dropout_rate, self.gene = in_features, num_classes, dropout, tuple(gene)
    self.projections = tuple([cs[i] != cs[i + 1] for i in range(4)] + [True] * 4)
    net = SPVCNN(in_features, num_classes, cr, blocks=counts, dropout=dropout, dtype=dtype, param_dtype=param_dtype,
                 rngs=rngs)
    width_names = [", ".join(n for n, g in zip(("stem", *_STAGES), gene) if g == k) for k in range(max(gene) + 1)]
    space = SearchSpace(tuple(scaled_choices(cs[gene.index(k)], width_fractions) for k in range(max(gene) + 1)),
                        tuple(tuple(range(1, b + 1)) for b in counts), tuple(width_names), _STAGES)
    layers = (_conv_bn(("backbone", "stem", 0), None, (gene[0],), ("subm", 0), 0) +
              _conv_bn(("backbone", "stem", 1), (gene[0],), (gene[0],), ("subm", 0), 0))
    for i in range(4):  # down stage i: level i -> level i + 1, widths cs[i] -> cs[i + 1]
      path = ("backbone", "stages", i)
      layers += _conv_bn((*path, 0), (gene[i],), (gene[i],), ("down", i), i + 1)
      for r in range(counts[i]):
        layers += _residual((*path, r + 1), i, r, (gene[i],) if r == 0 else (gene[i + 1],), gene[i + 1], i + 1,
                            project=r == 0 and self.projections[i])
    for j in range(4):  # up stage j: level 4 - j -> 3 - j, joined by the skip of width cs[3 - j]
      path, g = ("backbone", "ups", j), gene[5 + j]
      layers += _conv_bn((*path, 0), (gene[4 + j],), (g,), ("up", 3 - j), 3 - j)
      for r in range(counts[4 + j]):
        layers += _residual((*path, r + 1), 4 + j, r, (g, gene[3 - j]) if r == 0 else (g,), g, 3 - j,
                            project=r == 0)
    for k, (a, b) in enumerate(((0, 4), (4, 6), (6, 8))):
      layers += [Layer(("points", k, "linear"), "linear", (gene[a],), (gene[b],), ("points",)),
                 Layer(("points", k, "bn"), "bn", None, (gene[b],), ("points",))]
    layers.append(Layer(("classifier",), "linear", (gene[8],), None, ("points",)))
    self._init_supernet(net, space, layers, seed=seed, sampling=sampling)

  def plain_config(self, subnet: Subnet) -> dict:
    return dict(in_features=self.in_features, num_classes=self.num_classes,
                channels=[subnet.widths[g] for g in self.gene], blocks=list(subnet.depths),
                projections=list(self.projections), dropout=self.dropout_rate)

  def levels(self, xyz, batch, feats) -> tuple[dict, dict]:
    """``(geometry, inputs)`` of a batch of points (see :meth:`Supernet.levels`): the voxel levels 0..4 and
    ``("points",)``, the valid points (its input: their mask)."""
    x, _ = ops.voxelize(xyz, batch, feats)
    geometry, inputs = level_geometry(x, 5, 3, 2)
    mask = batch >= 0
    geometry[("points",)], inputs[("points",)] = int(mask.sum()), mask
    return geometry, inputs
