"""Subnets and search spaces: a subnet is a width per width gene and a depth per stage; a space lists the choices.

A *width gene* is a group of layers that share one channel count (a U-ResNet level, an SPVCNN stage or two stages
tied together); a *stage* is a run of residual blocks of which the first ``depth`` are kept. Subnets are small frozen
dataclasses: hashable (the search caches evaluations by subnet), ordered, and written to JSON as two lists.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, order=True)
class Subnet:
  """One subnet of a supernet.

  Attributes:
    widths: channels of each width gene (see the supernet's ``space.width_names``).
    depths: residual blocks kept in each stage (the first ``depths[s]`` of stage ``s``).

  Example:
    >>> sub = jsparse3d.nas.Subnet(widths=(8, 12, 18), depths=(1, 2, 1))
    >>> jsparse3d.nas.Subnet.from_dict(sub.to_dict()) == sub
    True
  """
  widths: tuple[int, ...]
  depths: tuple[int, ...]

  def __post_init__(self):
    object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
    object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))

  def to_dict(self) -> dict:
    return {"widths": list(self.widths), "depths": list(self.depths)}

  @classmethod
  def from_dict(cls, d: dict) -> Subnet:
    missing = {"widths", "depths"} - set(d)
    if missing:
      raise ValueError(f"a subnet needs keys 'widths' and 'depths'; {sorted(missing)} missing in {d!r}.")
    return cls(tuple(d["widths"]), tuple(d["depths"]))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """The choices of each width gene and each stage's depth.

  Attributes:
    width_choices: per width gene, the allowed channel counts (ascending; the last is the supernet's width).
    depth_choices: per stage, the allowed block counts (ascending; the last is the supernet's depth).
    width_names, stage_names: what each gene and stage is, for messages and reports.
  """
  width_choices: tuple[tuple[int, ...], ...]
  depth_choices: tuple[tuple[int, ...], ...]
  width_names: tuple[str, ...]
  stage_names: tuple[str, ...]

  def __post_init__(self):
    for kind, choices in (("width", self.width_choices), ("depth", self.depth_choices)):
      for c in choices:
        if not c or list(c) != sorted(set(c)) or c[0] < 1:
          raise ValueError(f"{kind} choices must be ascending positive ints without repeats, got {c!r}.")

  @property
  def max_widths(self) -> tuple[int, ...]:
    return tuple(c[-1] for c in self.width_choices)

  @property
  def max_depths(self) -> tuple[int, ...]:
    return tuple(c[-1] for c in self.depth_choices)

  def largest(self) -> Subnet:
    return Subnet(self.max_widths, self.max_depths)

  def smallest(self) -> Subnet:
    return Subnet(tuple(c[0] for c in self.width_choices), tuple(c[0] for c in self.depth_choices))

  def size(self) -> int:
    """The number of distinct subnets in the space."""
    return int(np.prod([len(c) for c in self.width_choices + self.depth_choices], dtype=np.float64))

  def check(self, subnet: Subnet) -> Subnet:
    """``subnet`` if the supernet can run it (any width from 1 to the gene's maximum, any depth from 1 to the
    stage's maximum), else a ValueError naming the gene or stage and the allowed range."""
    if not isinstance(subnet, Subnet):
      raise TypeError(f"expected a jsparse3d.nas.Subnet, got {type(subnet).__name__}; build one with "
                      "Subnet(widths=..., depths=...) or space.largest().")
    if len(subnet.widths) != len(self.width_choices) or len(subnet.depths) != len(self.depth_choices):
      raise ValueError(f"this supernet's subnets have {len(self.width_choices)} widths ({', '.join(self.width_names)})"
                       f" and {len(self.depth_choices)} depths ({', '.join(self.stage_names)}); got "
                       f"{len(subnet.widths)} and {len(subnet.depths)}.")
    for name, w, top in zip(self.width_names, subnet.widths, self.max_widths):
      if not 1 <= w <= top:
        raise ValueError(f"width {w} of {name} is outside 1..{top} (the supernet's width there); choose a width in "
                         "that range.")
    for name, d, top in zip(self.stage_names, subnet.depths, self.max_depths):
      if d < 1:
        raise ValueError(f"{name} has depth {d}: every stage keeps at least its first block (depth 1..{top}).")
      if d > top:
        raise ValueError(f"{name} has depth {d} but the supernet has {top} blocks there; choose 1..{top}.")
    return subnet

  def sample(self, rng: np.random.Generator) -> Subnet:
    """A subnet drawn uniformly: each gene's choice and each stage's depth independently."""
    return Subnet(tuple(int(rng.choice(c)) for c in self.width_choices),
                  tuple(int(rng.choice(c)) for c in self.depth_choices))

  def mutate(self, subnet: Subnet, rng: np.random.Generator, probability: float) -> Subnet:
    """Redraws each gene and each stage's depth with ``probability`` (from its choices)."""
    widths = [int(rng.choice(c)) if rng.random() < probability else w
              for w, c in zip(subnet.widths, self.width_choices)]
    depths = [int(rng.choice(c)) if rng.random() < probability else d
              for d, c in zip(subnet.depths, self.depth_choices)]
    return Subnet(tuple(widths), tuple(depths))

  def crossover(self, a: Subnet, b: Subnet, rng: np.random.Generator) -> Subnet:
    """Each gene and depth from ``a`` or ``b`` with equal chance."""
    pick = lambda x, y: tuple(int(u if rng.random() < 0.5 else v) for u, v in zip(x, y))
    return Subnet(pick(a.widths, b.widths), pick(a.depths, b.depths))


def scaled_choices(max_width: int, fractions: Sequence[float]) -> tuple[int, ...]:
  """Widths ``round(f * max_width)`` for each fraction (at least 1, without repeats, ascending), always ending at
  ``max_width``."""
  if not fractions or min(fractions) <= 0 or max(fractions) > 1:
    raise ValueError(f"width fractions must lie in (0, 1], got {list(fractions)!r}; e.g. [0.5, 0.75, 1.0].")
  return tuple(sorted({max(1, int(round(f * max_width))) for f in fractions} | {max_width}))
