"""Re-scores subnets of ``python -m train.nas`` runs: the same subnets on each run's trained supernet, on the
validation split that ``--config`` and ``--set`` describe.

Each ``--run NAME=DIR`` is the workdir of a train.nas run of ``--config``; the ``--set`` overrides must describe the
same model (``model.sampling`` does not change the weights' layout) and may change the validation split (another
``data.synthetic.eval_seed`` gives scans that no search has seen). Each supernet is restored from a copy of its
checkpoints (the run is not touched) and scores, the way the search does (batch norm recalibrated per subnet, the
config's metric): the largest, the smallest, each run's chosen subnet, and ``--subnets`` drawn uniformly within the
search's budget (a seeded draw, the same for every run). Prints a table and each run's mean over the drawn
subnets against the first run's. Uses: uniform against sandwich sampling (two runs), and a search's winner
checked on fresh scans (one run, another eval seed, ``--subnets 0``).

Run: ``python benchmarks/nas_rescore.py --config spvnas_lidar --set ... --run uniform=DIR [--run sandwich=DIR]
[--subnets 12] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from jsparse3d import nas
from train import configs
from train import nas as nas_cli
from train import tasks
from train import train_lib


def _restored(cfg, run: Path, scratch: Path):
  """The trained supernet of the train.nas workdir ``run`` (eval mode), restored from a copy of its checkpoints."""
  copy = scratch / run.name
  shutil.copytree(run / "supernet" / "checkpoints", copy / "checkpoints")
  result = train_lib.train(cfg, copy, progress=False)  # a finished run: restored, nothing trained
  if result["step"] != cfg["steps"]:
    raise ValueError(f"{run} holds a supernet at step {result['step']}, not a finished run of {cfg['steps']} steps.")
  return train_lib.trained_model(cfg, result["state"])


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", required=True)
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  ap.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
  ap.add_argument("--subnets", type=int, default=12, help="subnets drawn within the budget (besides the fixed ones)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", type=Path)
  args = ap.parse_args(argv)
  runs = dict(item.split("=", 1) for item in args.run)
  cfg = configs.get_config(args.config, args.set)
  nas_cli.check_search(cfg)
  task, layout = tasks.build_task(cfg), train_lib.Layout(cfg, 1)
  scores, subnets = {}, None
  with tempfile.TemporaryDirectory() as scratch:
    for name, folder in runs.items():
      supernet = _restored(cfg, Path(folder), Path(scratch))
      evaluator, _, _, macs = nas_cli.scoring(cfg, supernet, task, layout)
      if subnets is None:  # the same list for every run: the budget is the largest subnet's MACs on the same data
        space = supernet.space
        fixed = {"largest": space.largest(), "smallest": space.smallest()}
        for other, d in runs.items():
          summary = json.loads((Path(d) / "search" / "summary.json").read_text())
          fixed[f"chosen ({other})"] = nas.Subnet.from_dict(summary["chosen"]["subnet"])
        budget = cfg["nas"]["budget_fraction"] * macs(space.largest())
        rng, drawn = np.random.default_rng(args.seed), []
        while len(drawn) < args.subnets:
          sub = space.sample(rng)
          if macs(sub) <= budget and sub not in drawn and sub not in fixed.values():
            drawn.append(sub)
        subnets = list(fixed.items()) + [(f"drawn {i}", s) for i, s in enumerate(drawn)]
        fractions = {label: macs(s) / macs(space.largest()) for label, s in subnets}
      scores[name] = {label: float(evaluator(s)) for label, s in subnets}
      print(f"{name}: scored {len(subnets)} subnets", flush=True)
  names = list(runs)
  print(f"\n{'subnet':<22} {'MACs':>6} " + " ".join(f"{n:>10}" for n in names))
  for label, _ in subnets:
    print(f"{label:<22} {fractions[label]:6.3f} " + " ".join(f"{100 * scores[n][label]:10.2f}" for n in names))
  drawn_labels = [label for label, _ in subnets if label.startswith("drawn")]
  report = {}
  for n in names if drawn_labels else ():
    diff = [scores[n][k] - scores[names[0]][k] for k in drawn_labels]
    report[n] = dict(mean_drawn=float(np.mean([scores[n][k] for k in drawn_labels])),
                     mean_gain_over_first=float(np.mean(diff)), wins_over_first=int(sum(d > 0 for d in diff)))
    r = report[n]
    print(f"{n}: mean over the {len(drawn_labels)} drawn subnets {100 * r['mean_drawn']:.2f}; against {names[0]} "
          f"{100 * r['mean_gain_over_first']:+.2f} points (better on {r['wins_over_first']})")
  if args.out:
    args.out.write_text(json.dumps(dict(config=cfg["name"], overrides=args.set, runs=runs, report=report,
                                        subnets={label: dict(subnet=s.to_dict(), macs_fraction=fractions[label],
                                                             scores={n: scores[n][label] for n in names})
                                                 for label, s in subnets}), indent=1))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
