"""Evolution against random search on a surrogate of a real landscape, over many seeds.

A ``python -m train.nas`` run scores a few hundred subnets (``search/evaluations.jsonl``); three search seeds are
too few to tell two searches apart when their best scores differ by tenths of a point. This fits an additive
model to those scores (one effect per gene value, least squares), adds a fixed Gaussian residual per subnet with
the fit's residual spread, and runs random search and evolution (at several settings) on it with ``--seeds``
seeds, at the run's budget (MACs over the config's validation split) and number of evaluations, or at each of
``--evaluations``. Prints each setting's mean best against random search's, the seeds it wins, and the share of
seed triples (seeds 0-2, 3-5, ...) on whose mean it wins, the test that a ``train.nas`` run of 3 seeds makes.

Run: ``python benchmarks/nas_search_surrogate.py --config spvnas_lidar --set ... --run DIR [--seeds 30]
[--evaluations 40 80] [--settings 1 4]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from flax import nnx

from jsparse3d import nas
from train import configs
from train import nas as nas_cli
from train import tasks
from train import train_lib

SETTINGS = [dict(population=10, parents=4, mutation_probability=0.25),  # the configs' default
            dict(population=10, parents=4, mutation_probability=0.1),
            dict(population=10, parents=2, mutation_probability=0.1),
            dict(population=8, parents=3, mutation_probability=0.15),
            dict(population=6, parents=3, mutation_probability=0.1),
            dict(population=10, parents=4, mutation_probability=0.05)]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", required=True)
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  ap.add_argument("--run", required=True, type=Path, help="a train.nas workdir with search/evaluations.jsonl")
  ap.add_argument("--seeds", type=int, default=30)
  ap.add_argument("--evaluations", type=int, nargs="+", help="evaluations per search (default: the run's)")
  ap.add_argument("--settings", type=int, nargs="+", help="indices into SETTINGS (default: all)")
  args = ap.parse_args(argv)
  if args.seeds < 3:
    ap.error(f"--seeds must be at least 3 (a triple of seeds is what a train.nas run compares), got {args.seeds}.")
  cfg = configs.get_config(args.config, args.set)
  nas_cli.check_search(cfg)
  summary = json.loads((args.run / "search" / "summary.json").read_text())
  scored = {}
  for line in (args.run / "search" / "evaluations.jsonl").read_text().splitlines():
    r = json.loads(line)
    scored[nas.Subnet.from_dict(r["subnet"])] = r["score"]
  supernet = tasks.build_model(cfg, rngs=nnx.Rngs(0))  # only its layer table and the data's geometry count here
  task = tasks.build_task(cfg)
  validation = nas_cli.held_batches(train_lib.Layout(cfg, 1), task.eval_set, task, cfg)
  macs = nas_cli.macs_per_event(supernet, validation, len(task.eval_set))
  space = supernet.space
  choices = list(space.width_choices) + list(space.depth_choices)
  onehot = lambda s: np.concatenate([[1.0]] + [[float(v == c) for c in ch[1:]] for v, ch in zip(
      list(s.widths) + list(s.depths), choices)])
  x, y = np.array([onehot(s) for s in scored]), np.array(list(scored.values()))
  coef = np.linalg.lstsq(x, y, rcond=None)[0]
  sigma = float(np.std(y - x @ coef))
  print(f"{len(y)} scored subnets: spread {100 * np.std(y):.2f} points, additive fit's residual {100 * sigma:.2f}")
  scores, costs = {}, {}
  def score(s):
    if s not in scores:
      noise = np.random.default_rng(int(hashlib.sha256(repr(s).encode()).hexdigest()[:8], 16)).standard_normal()
      scores[s] = float(onehot(s) @ coef + sigma * noise)
    return scores[s]
  cost = lambda s: costs.setdefault(s, macs(s))
  budget = summary["budget_fraction"] * cost(space.largest())
  best = lambda history: nas.best(history).score
  settings = [SETTINGS[i] for i in args.settings] if args.settings else SETTINGS
  for evaluations in args.evaluations or [summary["evaluations_per_search"]]:
    rnd = [best(nas.random_search(space, score, cost, budget, evaluations=evaluations, seed=k))
           for k in range(args.seeds)]
    print(f"random search: mean best {100 * np.mean(rnd):.2f} over {args.seeds} seeds ({evaluations} evaluations)")
    for setting in settings:
      evo = [best(nas.evolutionary_search(space, score, cost, budget, evaluations=evaluations, seed=k, **setting))
             for k in range(args.seeds)]
      wins = sum(e > r for e, r in zip(evo, rnd))
      whole = len(evo) // 3 * 3  # the seeds that make whole triples
      triples = np.mean(np.reshape(evo[:whole], (-1, 3)).mean(1) > np.reshape(rnd[:whole], (-1, 3)).mean(1))
      print(f"  evolution {setting}: mean best {100 * np.mean(evo):.2f} ({100 * (np.mean(evo) - np.mean(rnd)):+.2f}"
            f"; above random on {wins} of {args.seeds} seeds, on the mean of {100 * triples:.0f}% of seed triples)",
            flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
