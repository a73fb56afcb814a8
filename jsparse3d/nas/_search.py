"""Searching a space for the most accurate subnet under a cost budget: evolution (SPVNAS) and random search.

Both take ``score(subnet) -> float`` (higher is better; e.g. a :class:`SubnetEvaluator`) and ``cost(subnet) ->
float`` (MACs, or a predicted latency), spend exactly ``evaluations`` scores on distinct subnets within the budget,
and return every evaluation in order. Given the same seed and a deterministic score they return the same history.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jsparse3d.nas._space import SearchSpace
from jsparse3d.nas._space import Subnet

# Draws of a random subnet within the budget before concluding that the budget admits too few of them.
_MAX_DRAWS = 10_000


@dataclasses.dataclass(frozen=True)
class Evaluated:
  """One evaluation of a search: the subnet, its score and cost, and when it was drawn (0-based)."""
  subnet: Subnet
  score: float
  cost: float
  index: int
  origin: str  # "random", "mutation" or "crossover"


def best(history) -> Evaluated:
  """The highest-scoring evaluation (the first of equal ones)."""
  return max(history, key=lambda e: (e.score, -e.index))


def _check_budget(space: SearchSpace, cost: Callable, budget: float) -> None:
  smallest = cost(space.smallest())
  if smallest > budget:
    raise ValueError(f"the budget {budget:.4g} is below the smallest subnet's cost {smallest:.4g}; raise the budget "
                     "or widen the search space.")


def _random_within(space, cost, budget, rng, seen):
  for _ in range(_MAX_DRAWS):
    sub = space.sample(rng)
    if sub not in seen and cost(sub) <= budget:
      return sub
  raise ValueError(f"{_MAX_DRAWS} random draws found no new subnet within the budget {budget:.4g} (after "
                   f"{len(seen)} evaluations); raise the budget or ask for fewer evaluations.")


def random_search(space: SearchSpace, score: Callable, cost: Callable, budget: float, *, evaluations: int,
                  seed: int = 0) -> list[Evaluated]:
  """Scores ``evaluations`` distinct subnets drawn uniformly among those within ``budget``.

  Example:
    >>> space = jsparse3d.nas.SearchSpace(((4, 8),) * 2, ((1, 2),) * 2, ("a", "b"), ("s", "t"))
    >>> score = lambda s: -abs(s.widths[0] - 8) - abs(s.depths[1] - 1)      # e.g. a SubnetEvaluator
    >>> cost = lambda s: sum(s.widths) * sum(s.depths)                      # e.g. MACs
    >>> history = jsparse3d.nas.random_search(space, score, cost, 40, evaluations=5, seed=0)
    >>> len(history), all(e.cost <= 40 for e in history)
    (5, True)
  """
  _check_budget(space, cost, budget)
  rng, history, seen = np.random.default_rng(seed), [], set()
  for i in range(evaluations):
    sub = _random_within(space, cost, budget, rng, seen)
    seen.add(sub)
    history.append(Evaluated(sub, float(score(sub)), float(cost(sub)), i, "random"))
  return history


def evolutionary_search(space: SearchSpace, score: Callable, cost: Callable, budget: float, *, evaluations: int,
                        population: int = 16, parents: int = 4, mutation_probability: float = 0.2,
                        crossover_share: float = 0.5, seed: int = 0) -> list[Evaluated]:
  """SPVNAS's evolution: a random population within the budget, then generations of children (mutations of a
  random parent, each gene redrawn with ``mutation_probability``, and crossovers of two) from the ``parents``
  best so far, each child new and within the budget, until ``evaluations`` subnets are scored.

  Args:
    space: the search space. score: higher is better. cost: compared with ``budget``.
    evaluations: subnets scored in all (the first ``population`` at random). population: subnets per generation.
    parents: the best subnets so far that breed the next generation. mutation_probability: per gene and depth.
    crossover_share: the share of a generation made by crossover. seed: of the draws.
  Returns:
    every evaluation, in order (``best(history)`` is the answer). A longer search with the same settings begins
    with this history when ``evaluations`` is a whole number of generations (a multiple of ``population``), as
    random search always does: the best score against evaluations spent is one run's curve, not many runs'.

  Example:
    >>> space = jsparse3d.nas.SearchSpace(((4, 8, 12),) * 3, ((1, 2),) * 2, ("a", "b", "c"), ("s", "t"))
    >>> score = lambda s: -abs(s.widths[0] - 12) - abs(s.widths[2] - 4)
    >>> history = jsparse3d.nas.evolutionary_search(space, score, lambda s: sum(s.widths), 24, evaluations=20,
    ...                                             population=6, parents=2, seed=0)
    >>> jsparse3d.nas.best(history).subnet.widths[::2]
    (12, 4)
  """
  if not 1 <= parents <= population:
    raise ValueError(f"parents must be in 1..population ({population}), got {parents}.")
  if not 0 <= crossover_share <= 1 or not 0 < mutation_probability <= 1:
    raise ValueError(f"crossover_share must be in [0, 1] and mutation_probability in (0, 1], got {crossover_share} "
                     f"and {mutation_probability}.")
  _check_budget(space, cost, budget)
  rng, history, seen = np.random.default_rng(seed), [], set()

  def add(sub, origin):
    seen.add(sub)
    history.append(Evaluated(sub, float(score(sub)), float(cost(sub)), len(history), origin))

  for _ in range(min(population, evaluations)):
    add(_random_within(space, cost, budget, rng, seen), "random")
  while len(history) < evaluations:
    top = sorted(history, key=lambda e: (-e.score, e.index))[:parents]
    generation = min(population, evaluations - len(history))
    crossovers = int(round(crossover_share * generation)) if len(top) > 1 else 0
    for k in range(generation):
      origin = "crossover" if k < crossovers else "mutation"
      for _ in range(_MAX_DRAWS):
        if origin == "crossover":
          a, b = rng.choice(len(top), 2, replace=False)
          child = space.crossover(top[a].subnet, top[b].subnet, rng)
        else:
          child = space.mutate(top[rng.integers(len(top))].subnet, rng, mutation_probability)
        if child not in seen and cost(child) <= budget:
          break
      else:  # the parents' neighbourhood is exhausted: a fresh random subnet keeps the count
        child, origin = _random_within(space, cost, budget, rng, seen), "random"
      add(child, origin)
  return history


def pareto_front(points) -> list[int]:
  """Indices of the points ``(cost, score)`` that no other point beats in both (lower cost, higher score),
  ordered by cost."""
  order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
  front, best_score = [], -np.inf
  for i in order:
    if points[i][1] > best_score:
      front.append(i)
      best_score = points[i][1]
  return front
