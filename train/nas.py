"""``python -m train.nas --config uresnet_nas_lartpc | spvnas_lidar [--workdir DIR] [--set key=value ...]``: 3D-NAS.

1. Trains the config's supernet with the normal trainer (resume, metrics, progress bars, ``--devices``): each step
   runs a subnet drawn uniformly from the space (``<workdir>/supernet``).
2. Builds the cost model on the validation split: MACs per event over its real kernel-map pairs, and a per-layer
   latency table of this machine, fitted and checked on the measured latency of a few exported subnets.
3. For each search seed, an evolutionary search and a random search of the same number of evaluations for the best
   validation score (non-zero accuracy, or mIoU for LiDAR) within the budget (``nas.budget_fraction`` of the
   largest subnet's MACs or predicted latency); every subnet is recalibrated (batch norm) before it is scored.
4. Exports the best subnet found as a plain model (weights and recalibrated statistics), checks it against the
   supernet, times it against the largest subnet's export, and scores both on the test split when there is one.
5. With ``nas.finetune_steps`` > 0, fine-tunes that export and, as its reference, the largest subnet's export with
   the normal trainer, the same steps and recipe for both.

Writes ``<workdir>/search``: ``evaluations.jsonl`` (every evaluation), ``scores.jsonl`` (every subnet's scores,
appended as they are made), ``latency.json``, ``pareto.png``, ``progress.png`` (best score against evaluations
spent), ``summary.json``; ``<workdir>/subnet``: ``weights/`` (``jsparse3d.nn.load_weights``) and ``subnet.json`` (the
plain model's config); ``<workdir>/largest``: the same for the largest subnet; with fine-tuning, the trainer's
workdirs ``finetune`` and ``finetune_largest``. A rerun resumes the supernet's training, then repeats the search
(deterministic) unless it finished for the same config (``nas.finetune_steps`` aside), and resumes the
fine-tuning. A repeated search reads back the scores of the subnets already scored for the same supernet and
scoring, so resuming an interrupted search, or running more evaluations (see ``nas.evolutionary_search`` on when
a longer search begins as the shorter one did), other seeds or another budget, scores only new subnets.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jsparse3d import nas
from jsparse3d import nn
from train import tasks
from train import train_lib

_METRIC = {"UResNet": "nonzero_accuracy", "SPVCNN": "miou"}


def check_search(cfg) -> None:
  """Clear errors for a bad ``nas`` section, before any training."""
  s = cfg.get("nas")
  if not isinstance(s, dict):
    raise ValueError(f"config {cfg['name']!r} has no nas section; use a NAS config (uresnet_nas_lartpc, "
                     "spvnas_lidar).")
  if s["budget"] not in ("macs", "latency"):
    raise ValueError(f"nas.budget must be 'macs' or 'latency', got {s['budget']!r}.")
  if not 0 < s["budget_fraction"] <= 1:
    raise ValueError(f"nas.budget_fraction must be in (0, 1] (of the largest subnet's cost), got "
                     f"{s['budget_fraction']!r}.")
  for key in ("evaluations", "population", "parents", "calibration_batches", "latency_subnets", "latency_repeats"):
    if not isinstance(s[key], int) or s[key] < 1:
      raise ValueError(f"nas.{key} must be a positive int, got {s[key]!r}.")
  if s["latency_subnets"] < 2:
    raise ValueError("nas.latency_subnets must be at least 2 (the largest and smallest fit the table; the rest check "
                     "it).")
  if not s["search_seeds"]:
    raise ValueError("nas.search_seeds must list at least one seed.")


def _model_inputs(x) -> tuple:
  return x if isinstance(x, tuple) else (x,)


def held_batches(layout, dataset, task, cfg):
  """Every event of ``dataset`` in order, as batches held in memory (each subnet scores them all), labels checked."""
  out = list(train_lib.eval_loader(dataset, task, layout, cfg))
  for _, y in out:
    train_lib.check_targets(y, cfg, task, "evaluation labels")
  return out


def _latency(supernet, subnets, reference, repeats, say):
  """Measured end-to-end latency of the exports of ``subnets`` (interleaved rounds, medians)."""
  exports = {s: supernet.export(s) for s in subnets}
  rounds = {s: [] for s in subnets}
  for _ in range(3):
    for s in subnets:
      rounds[s].append(nas.measure_latency(exports[s], reference, repeats=repeats))
  measured = {s: float(np.median(t)) for s, t in rounds.items()}
  say("measured latency (ms): " + ", ".join(f"{1e3 * t:.1f}" for t in measured.values()))
  return measured


def _log_ticks(lo: float, hi: float, at_least: int = 5) -> list[float]:
  """Round ticks for a log axis over ``[lo, hi]``, which spans a decade or less here: the coarsest of a few
  mantissa series that puts ``at_least`` ticks in range (matplotlib's own put one or two labels on such a span)."""
  decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
  series = ((1, 2, 5), (1, 2, 3, 5, 7), (1, 1.5, 2, 3, 4, 5, 6, 7, 8), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
  for mantissas in series:
    ticks = [float(f"{m * 10.0 ** e:.6g}") for e in decades for m in mantissas if lo <= m * 10.0 ** e <= hi]
    if len(ticks) >= at_least:
      break
  return ticks


def _plot(path: Path, records, chosen, budget_kind, budget, largest, metric):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
  scale = {"macs": 1e-9, "latency": 1e3}
  label = {"macs": "GMACs per event (log scale)", "latency": "predicted forward latency, one batch (ms, log scale)"}
  name = "mIoU" if metric == "miou" else "non-zero accuracy"
  for ax, kind in zip(axes, ("macs", "latency")):
    for method, colour in (("random", "tab:grey"), ("evolution", "tab:blue")):
      pts = [(r[kind] * scale[kind], 100 * r["score"]) for r in records if r["method"] == method]
      ax.scatter(*zip(*pts), s=14, alpha=0.6, color=colour, label=f"{method} search")
    every = [(r[kind] * scale[kind], 100 * r["score"]) for r in records] + [(largest[kind] * scale[kind],
                                                                               100 * largest["score"])]
    front = nas.pareto_front(every)
    ax.plot(*zip(*[every[i] for i in front]), color="black", lw=1, drawstyle="steps-post", label="Pareto front")
    ax.scatter([largest[kind] * scale[kind]], [100 * largest["score"]], marker="s", s=50, color="tab:red",
               label="largest subnet", zorder=5)
    ax.scatter([chosen[kind] * scale[kind]], [100 * chosen["score"]], marker="*", s=160, color="tab:orange",
               edgecolor="black", zorder=5, label="chosen subnet")
    if kind == budget_kind:
      ax.axvline(budget * scale[kind], color="tab:orange", ls="--", lw=1, label="budget")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(_log_ticks(*ax.get_xlim())))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(label[kind])
    ax.set_ylabel(f"validation {name} (%)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8, loc="lower right")
  fig.suptitle(f"every subnet the searches scored (all within the {budget_kind} budget) and the largest subnet")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def best_so_far(records, method: str) -> dict:
  """``{seed: [best score among the first n evaluations, for n = 1, 2, ...]}`` of ``method``'s searches."""
  seeds = sorted({r["seed"] for r in records if r["method"] == method})
  curves = {}
  for seed in seeds:
    history = sorted((r for r in records if r["method"] == method and r["seed"] == seed), key=lambda r: r["index"])
    curves[seed] = list(np.maximum.accumulate([r["score"] for r in history]))
  return curves


def _plot_progress(path: Path, records, metric, largest_score):
  """The best score found against the evaluations spent: each seed thin, the mean over seeds thick."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  methods = {"random": "tab:grey", "evolution": "tab:blue"}
  by_method = {method: best_so_far(records, method) for method in methods}
  for method, colour in methods.items():
    curves = by_method[method]
    n = np.arange(1, min(map(len, curves.values())) + 1)
    for curve in curves.values():
      ax.plot(n, 100 * np.array(curve[:len(n)]), color=colour, lw=0.8, alpha=0.45)
    mean = 100 * np.mean([c[:len(n)] for c in curves.values()], axis=0)
    ax.plot(n, mean, color=colour, lw=2.2, label=f"{method} search, mean of {len(curves)} seeds")
  ax.axhline(100 * largest_score, color="tab:red", ls="--", lw=1, label="largest subnet (over budget)")
  name = "mIoU" if metric == "miou" else "non-zero accuracy"
  ax.set_xlabel("subnets evaluated")
  ax.set_ylabel(f"best validation {name} so far (%)")
  # From the first generation on: the random start would stretch the axis over the part that decides nothing.
  low = min(100 * np.mean([c[min(len(c), 10) - 1] for c in curves.values()]) for curves in by_method.values())
  top = max(100 * largest_score, 100 * max(r["score"] for r in records))
  ax.set_ylim(low - 0.1 * (top - low), top + 0.1 * (top - low))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  ax.set_title("best subnet found within the budget, by evaluations spent", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _evaluator(cfg, supernet, task, calibration, batches):
  return nas.SubnetEvaluator(supernet, calibration=calibration, validation=batches,
                             num_classes=cfg["model"]["num_classes"], metric=_METRIC[supernet.plain_class().__name__],
                             forward=task.eval_forward or task.forward, ignore_index=task.ignore_index)


def scoring(cfg, supernet, task, layout):
  """What the search scores with: ``(evaluator, calibration, validation, macs)``. The evaluator recalibrates each
  subnet's batch norm on ``nas.calibration_batches`` training batches (not augmented, in an order of their own, so
  not the supernet's first steps) and scores the validation split (every event, held in memory); ``macs(subnet)``
  is its MACs per validation event over the real kernel-map pairs."""
  calibration = [x for x, _ in layout.loader(task.train_set, task, seed=cfg["seed"] + 1, prefetch=0,
                                             num_steps=cfg["nas"]["calibration_batches"])]
  validation = held_batches(layout, task.eval_set, task, cfg)
  evaluator = _evaluator(cfg, supernet, task, calibration, validation)
  return evaluator, calibration, validation, macs_per_event(supernet, validation, len(task.eval_set))


def macs_per_event(supernet, batches, events: int):
  """``macs(subnet)``: a subnet's MACs over the real kernel-map pairs of ``batches`` (``(inputs, labels)`` pairs
  holding ``events`` events), per event."""
  geometry = {}
  for x, _ in batches:
    for key, value in supernet.geometry(*_model_inputs(x)).items():
      geometry[key] = geometry.get(key, 0) + value
  return lambda sub: supernet.macs(sub, geometry) / events


# The nas settings a subnet's score does not depend on: a search that changes only these reuses earlier scores.
_SEARCH_ONLY = ("budget", "budget_fraction", "evaluations", "population", "parents", "mutation_probability",
                "crossover_share", "search_seeds", "latency_subnets", "latency_repeats", "finetune_steps")


def _config_hash(cfg, ignored):
  """A sha256 of the config but the ``nas`` settings named in ``ignored``."""
  keyed = copy.deepcopy(cfg)
  for key in ignored:
    keyed["nas"].pop(key)
  return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode())


def _scoring_digest(cfg, supernet) -> str:
  """What a subnet's validation score depends on: the supernet's weights and statistics, and the config (data,
  calibration) but the search's own settings."""
  h = _config_hash(cfg, _SEARCH_ONLY)
  for leaf in jax.tree.leaves(nnx.state(supernet, nnx.Param, nnx.BatchStat)):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


class ScoreLog:
  """``score(subnet)`` through ``evaluator``, with every score appended to ``path`` as it is made and read back by
  a later search of the same supernet and scoring (``digest``): an interrupted search, or one with more
  evaluations, other seeds or another budget, scores only subnets it has not scored before. A log of another
  digest is started afresh.

  Attributes: ``reused``, the subnets whose scores came from the file, and ``fresh``, those scored here.
  """

  def __init__(self, path: Path, digest: str, evaluator, say=print):
    self.path, self.evaluator, self.reused, self.fresh = Path(path), evaluator, set(), set()
    self._stored = set()  # the subnets whose scores the file holds
    lines = self.path.read_text().splitlines() if self.path.exists() else []
    if lines and json.loads(lines[0]).get("scoring_digest") == digest:
      for line in lines[1:]:
        r = json.loads(line)
        subnet = nas.Subnet.from_dict(r.pop("subnet"))
        evaluator.cache[subnet] = r
        self._stored.add(subnet)
      say(f"{len(lines) - 1} subnet scores read back from {self.path}")
    else:
      if lines:
        say(f"{self.path} holds the scores of another supernet or scoring setup: started afresh")
      self.path.write_text(json.dumps(dict(scoring_digest=digest)) + "\n")

  def __call__(self, subnet) -> float:
    value = self.evaluator(subnet)
    if subnet in self._stored:
      self.reused.add(subnet)
    elif subnet not in self.fresh:
      self.fresh.add(subnet)
      with open(self.path, "a") as f:
        f.write(json.dumps(dict(subnet=subnet.to_dict(), **self.evaluator.scores(subnet))) + "\n")
    return value


def search(cfg, workdir: Path, supernet, task, layout, *, say=print) -> dict:
  """Steps 2-4 of the module docstring on a trained ``supernet``; returns the summary it writes."""
  s = cfg["nas"]
  out = workdir / "search"
  out.mkdir(parents=True, exist_ok=True)
  plain = supernet.plain_class().__name__
  metric = _METRIC[plain]
  space = supernet.space
  evaluator, calibration, validation, macs = scoring(cfg, supernet, task, layout)
  score = ScoreLog(out / "scores.jsonl", _scoring_digest(cfg, supernet), evaluator, say)

  say(f"latency table: every layer choice of the {space.size():,} subnets, timed on one validation batch...")
  t0 = time.perf_counter()
  reference = _model_inputs(validation[0][0])
  table = nas.LatencyTable(supernet, reference, repeats=s["latency_repeats"])
  rng = np.random.default_rng(cfg["seed"])
  fit = [space.largest(), space.smallest()]
  held = []
  while len(held) < s["latency_subnets"] - 2 and len(held) < space.size() - 2:
    sub = space.sample(rng)
    if sub not in fit and sub not in held:
      held.append(sub)
  measured = _latency(supernet, fit + held, reference, s["latency_repeats"], say)
  scale, overhead = table.calibrate({k: measured[k] for k in fit})
  errors = [abs(table.predict(k) - measured[k]) / measured[k] for k in held]
  latency_report = dict(entries=len(table.entries), seconds_to_build=time.perf_counter() - t0, scale=scale,
                        overhead_ms=1e3 * overhead,
                        subnets=[dict(subnet=k.to_dict(), measured_ms=1e3 * measured[k], predicted_ms=1e3 *
                                      table.predict(k), used_to_fit=k in fit) for k in fit + held],
                        mean_abs_error=float(np.mean(errors)) if errors else None,
                        max_abs_error=float(np.max(errors)) if errors else None)
  (out / "latency.json").write_text(json.dumps(latency_report, indent=1))
  if errors:
    say(f"latency table: {len(table.entries)} entries; predictions of {len(held)} subnets not used to fit it are "
        f"off by {100 * np.mean(errors):.1f}% on average (at most {100 * np.max(errors):.1f}%)")

  cost = macs if s["budget"] == "macs" else table.predict
  largest = space.largest()
  budget = s["budget_fraction"] * cost(largest)
  say(f"searching: {s['evaluations']} evaluations per search, budget {s['budget_fraction']:.2f} of the largest "
      f"subnet's {s['budget']} ({budget:.4g}), seeds {list(s['search_seeds'])}")
  runs, records = [], []
  t0 = time.perf_counter()
  for seed in s["search_seeds"]:
    for method in ("evolution", "random"):
      if method == "evolution":
        history = nas.evolutionary_search(space, score, cost, budget, evaluations=s["evaluations"],
                                          population=s["population"], parents=s["parents"],
                                          mutation_probability=s["mutation_probability"],
                                          crossover_share=s["crossover_share"], seed=seed)
      else:
        history = nas.random_search(space, score, cost, budget, evaluations=s["evaluations"], seed=seed)
      top = nas.best(history)
      runs.append(dict(method=method, seed=seed, best_score=top.score, best=top.subnet.to_dict()))
      say(f"  seed {seed}, {method}: best {metric} {top.score:.4f} ({len(score.fresh)} subnets scored so far, "
          f"{len(score.reused)} read back)")
      records += [dict(method=method, seed=seed, index=e.index, origin=e.origin, subnet=e.subnet.to_dict(),
                       score=e.score, macs=macs(e.subnet), latency=table.predict(e.subnet)) for e in history]
  search_seconds = time.perf_counter() - t0
  with open(out / "evaluations.jsonl", "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  mean = lambda method: float(np.mean([r["best_score"] for r in runs if r["method"] == method]))

  evolved = [r for r in records if r["method"] == "evolution"]
  chosen_rec = max(evolved, key=lambda r: (r["score"], -r["macs"]))
  chosen = nas.Subnet.from_dict(chosen_rec["subnet"])
  recal = evaluator.recalibrated(chosen)
  model = recal.export(chosen)
  x0 = validation[0][0]
  leaf = lambda v: np.asarray(v.feats if hasattr(v, "feats") else v)
  expect, got = leaf(recal(*_model_inputs(x0), subnet=chosen)), leaf(model(*_model_inputs(x0)))
  export_error = float(np.max(np.abs(expect - got)))
  export_scale = float(np.max(np.abs(expect)))  # float32 rounding grows with the logits
  timing = _latency(supernet, [largest, chosen], reference, s["latency_repeats"], say)
  _save_export(workdir / "subnet", supernet, chosen, model)
  _save_export(workdir / "largest", supernet, largest, evaluator.recalibrated(largest).export(largest))

  test = {}
  if task.test_set is not None:
    tester = _evaluator(cfg, supernet, task, calibration, held_batches(layout, task.test_set, task, cfg))
    test = {"chosen": tester.scores(chosen), "largest": tester.scores(largest), "events": len(task.test_set)}
  largest_rec = dict(score=score(largest), macs=macs(largest), latency=table.predict(largest))
  summary = dict(
      config=cfg["name"], search_digest=_search_digest(cfg), metric=metric, budget=s["budget"],
      budget_fraction=s["budget_fraction"], budget_value=budget,
      space_size=space.size(), evaluations_per_search=s["evaluations"], subnets_scored=len(score.fresh),
      subnets_read_back=len(score.reused),
      # every subnet runs in the same programs: one compile per batch shape, not per subnet
      scoring_batch_shapes=len(evaluator.batch_shapes),
      search_seconds=search_seconds, runs=runs, mean_best=dict(evolution=mean("evolution"), random=mean("random")),
      chosen=dict(subnet=chosen.to_dict(), score=chosen_rec["score"], macs=chosen_rec["macs"],
                  macs_fraction=chosen_rec["macs"] / largest_rec["macs"], measured_latency_ms=1e3 * timing[chosen],
                  parameters=_count(model)),
      largest=dict(subnet=largest.to_dict(), score=largest_rec["score"], macs=largest_rec["macs"],
                   measured_latency_ms=1e3 * timing[largest], parameters=_count(supernet.net)),
      speedup=timing[largest] / timing[chosen], export_max_abs_error=export_error,
      export_max_abs_logit=export_scale, test=test,
      latency_table=dict(mean_abs_error=latency_report["mean_abs_error"],
                         max_abs_error=latency_report["max_abs_error"]))
  (out / "summary.json").write_text(json.dumps(summary, indent=1))
  _plot(out / "pareto.png", records, chosen_rec, s["budget"], budget, largest_rec, metric)
  _plot_progress(out / "progress.png", records, metric, largest_rec["score"])
  say(f"chosen subnet {chosen}: validation {metric} {chosen_rec['score']:.4f} (largest {largest_rec['score']:.4f}) "
      f"at {summary['chosen']['macs_fraction']:.3f} of its MACs, {summary['speedup']:.2f}x faster measured; "
      f"evolution {mean('evolution'):.4f} vs random {mean('random'):.4f} (mean best over seeds); export matches "
      f"the supernet to {export_error:.1e} (logits up to {export_scale:.3g})")
  return summary


def _count(model) -> int:
  return int(sum(np.size(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _save_export(folder: Path, supernet, subnet, model) -> None:
  """``folder/weights`` (the export's weights and statistics) and ``folder/subnet.json`` (its plain config)."""
  if folder.exists():
    shutil.rmtree(folder)
  folder.mkdir(parents=True)
  nn.save_weights(model, folder / "weights")
  config = dict(kind=supernet.plain_class().__name__, **supernet.plain_config(subnet))
  (folder / "subnet.json").write_text(json.dumps(dict(subnet=subnet.to_dict(), model=config), indent=1))


def _search_digest(cfg) -> str:
  """What a finished search depends on: the whole config but the fine-tuning's length."""
  return _config_hash(cfg, ("finetune_steps",)).hexdigest()[:16]


def finetune(cfg, workdir: Path, export: str = "subnet", *, resume: bool, progress: bool) -> dict:
  """Fine-tunes an export (``<workdir>/<export>``: ``subnet``, the chosen one, or ``largest``) with the normal
  trainer for ``nas.finetune_steps``, in ``<workdir>/finetune`` (``finetune_largest``)."""
  spec = json.loads((workdir / export / "subnet.json").read_text())
  tuned = copy.deepcopy(cfg)
  steps = cfg["nas"]["finetune_steps"]
  suffix = "" if export == "subnet" else f"_{export}"
  tuned.update(name=f"{cfg['name']}_finetune{suffix}", model=spec["model"], steps=steps, eval_every=steps,
               checkpoint_every=steps, init_weights=str((workdir / export / "weights").absolute()))
  tuned.pop("nas")
  return train_lib.train(tuned, workdir / f"finetune{suffix}", resume=resume, progress=progress)


def _finished_search(cfg, workdir: Path) -> dict | None:
  """The summary of a search that finished in ``workdir`` for this config (``nas.finetune_steps`` aside)."""
  path = workdir / "search" / "summary.json"
  if not path.exists():
    return None
  summary = json.loads(path.read_text())
  return summary if summary.get("search_digest") == _search_digest(cfg) else None


def run(cfg, workdir, *, resume: bool = True, progress: bool = True, devices: int = 1) -> dict:
  """The whole pipeline (module docstring); returns the search summary (process 0; other processes only train)."""
  check_search(cfg)
  workdir = Path(workdir)
  result = train_lib.train(cfg, workdir / "supernet", resume=resume, progress=progress, devices=devices)
  if jax.process_index() != 0 or result["stopped"] is not None:
    return dict(stopped=result["stopped"])
  supernet = train_lib.trained_model(cfg, result["state"])
  task = tasks.build_task(cfg)
  layout = train_lib.Layout(cfg, 1)
  summary = _finished_search(cfg, workdir) if resume else None
  if summary is not None:
    print(f"the search in {workdir / 'search'} finished for this config: not repeated", flush=True)
  else:
    summary = search(cfg, workdir, supernet, task, layout)
    for stale in ("finetune", "finetune_largest"):  # fine-tuned from the exports this search has replaced
      if (workdir / stale).exists():
        shutil.rmtree(workdir / stale)
        print(f"removed {workdir / stale}: it fine-tuned the previous search's export", flush=True)
  if cfg["nas"]["finetune_steps"]:
    summary["finetuned"] = {}
    for name, export in (("chosen", "subnet"), ("largest", "largest")):
      tuned = finetune(cfg, workdir, export, resume=resume, progress=progress)
      summary["finetuned"][name] = {split: {k: tuned[split][k] for k in ("step", "nonzero_accuracy", "miou")}
                                    for split in ("eval", "test") if tuned.get(split)}
    (workdir / "search" / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary


def main(argv=None) -> int:
  from train import __main__ as cli
  ap = cli._parser()
  ap.prog = "python -m train.nas"
  ap.description = __doc__
  ap.set_defaults(config="uresnet_nas_lartpc")
  args = ap.parse_args(argv)
  cli._setup(ap, args)
  from train import configs
  try:
    cfg = configs.get_config(args.config, args.set)
    check_search(cfg)
  except ValueError as e:
    ap.error(str(e))
  workdir = args.workdir or f"runs/{cfg['name']}"
  print(f"config {cfg['name']}: supernet {cfg['steps']} steps of {cfg['batch_size']} events, then the search; "
        f"workdir {workdir}", flush=True)
  try:
    summary = run(cfg, workdir, resume=not args.no_resume, progress=not args.no_progress, devices=args.devices)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if summary.get("stopped") is not None:
    print(f"stopped by signal {summary['stopped']}; run again to resume.")
    return 128 + int(summary["stopped"])
  return 0


if __name__ == "__main__":
  from jsparse3d import training
  training.restart_with_huge_pages()  # XLA's temporaries on 2 MiB pages: see jsparse3d/training/_memory.py
  sys.exit(main())
