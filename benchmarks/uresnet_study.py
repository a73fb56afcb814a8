"""The sparse-vs-dense U-ResNet study of Domine and Terao (CPAD 2018; ACAT 2019, arXiv:1903.05663), on this library.

The same U-ResNet (depth 5, 16 filters, 5 classes) as a submanifold sparse network (``models.UResNet``) and as a
dense one (``models.DenseUResNet``), on synthetic LArTPC events. Parts (``--parts``, default all):

  scaling   time per event (forward; training step = forward, loss on non-empty voxels, backward and Adam) and
            peak memory against the image side: sparse at 192, 512 and 768, dense at 64, 96 and 128 (timed) and at
            192, 512 and 768 (compiled only: the bytes it would need, from XLA's memory analysis). Memory is XLA's
            compiled-memory analysis of the training step (arguments + outputs + temporaries) and the measured
            peak RSS of a fresh process that compiles and runs it. Sparse runs at 64-128 too, on the same events
            as the dense network, for the ratios.
  voxels    the sparse forward time of single events against their number of non-zero voxels, with a linear fit.
  batch2d   the 2D batch study: both networks in 2D (3x3x1 kernels on a flat z axis for the sparse network,
            2D convolutions for the dense one) on 512 x 512 images (events projected along z) at batch 88:
            memory of both at batch 88 (the dense step compiled only), times of both at batch 8.

Every configuration runs in its own process (``--child``), one at a time, so each peak RSS is that
configuration's alone. Times are medians of ``--reps`` calls after one untimed call (which compiles). Writes
``--out`` (JSON) and the figures into ``--figures``. ``--quick`` runs small sizes of a small network (a test
runs it).

  python benchmarks/uresnet_study.py                  # about 25 minutes on 2 cores
  python benchmarks/uresnet_study.py --quick --out /tmp/study.json --figures /tmp/figs
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import _uresnet_learning
from _study import ROOT
from _study import run_child
from _study import run_parts
from _study import run_trainer

from _timing import peak_rss_mb
from _timing import times_ms

# Part 4's variants of the main job: name -> its ``--set`` overrides (the first is the baseline). The weights of
# "sqrt_inverse_frequency" come from the training split's class frequencies (``_sqrt_inverse_frequency``).
VARIANTS = {"cross_entropy": [], "inverse_frequency": ["class_weights=inverse_frequency"],
            "sqrt_inverse_frequency": None, "focal_loss": ["focal_gamma=2.0"]}
FULL = dict(model=dict(filters=16, depth=5, reps=2), sparse=(64, 96, 128, 192, 512, 768), dense=(64, 96, 128),
            dense_compile_only=(192, 512, 768), voxel_sizes=(192, 512, 768), voxel_events=8, reps=7, dense_reps=2,
            batch2d=dict(size=512, batch=88, timed_batch=8),
            accuracy=dict(size=128, dims=2, batch=4, steps=600, eval_every=50, val_events=64, learning_rate=4e-3,
                          warmup_steps=50, train_seed=20_000, val_seed=30_000),
            classes=dict(config="uresnet_lartpc", common=[], variants=VARIANTS, frequency_events=400, displays=3,
                         min_michel_voxels=10, margin=12))
QUICK = dict(model=dict(filters=4, depth=3, reps=1), sparse=(32, 64), dense=(32,), dense_compile_only=(64,),
             voxel_sizes=(32, 64), voxel_events=3, reps=2, dense_reps=1, batch2d=dict(size=64, batch=4, timed_batch=2),
             accuracy=dict(size=32, dims=2, batch=2, steps=6, eval_every=3, val_events=4, learning_rate=4e-3,
                           warmup_steps=2, train_seed=20_000, val_seed=30_000),
             classes=dict(config="uresnet_lartpc_smoke", common=["data.synthetic.test_events=16"],
                          variants={k: VARIANTS[k] for k in ("cross_entropy", "sqrt_inverse_frequency", "focal_loss")},
                          frequency_events=16, displays=2, min_michel_voxels=1, margin=12))


# -- one configuration, in a fresh process ----------------------------------------------------------------------


def _events(size: int, seeds, dims: int):
  """Synthetic events at ``size``; in 2D each is projected along z (energy summed, the label of the voxel that
  deposits most)."""
  import numpy as np  # noqa: PLC0415

  from jsparse3d import data  # noqa: PLC0415
  events = [data.synthetic_lartpc_event(int(s), size=size) for s in seeds]
  if dims == 3:
    return events
  out = []
  for ev in events:
    c, e, lab = ev["coords"], ev["energy"], ev["labels"]
    order = np.lexsort((-e, c[:, 1], c[:, 0]))  # per (x, y) column, the largest deposit first
    c, e, lab = c[order], e[order], lab[order]
    first = np.r_[True, np.any(c[1:, :2] != c[:-1, :2], axis=1)]
    column = np.cumsum(first) - 1
    out.append(dict(coords=np.c_[c[first, :2], np.zeros(first.sum(), c.dtype)],
                    energy=np.bincount(column, e).astype(np.float32), labels=lab[first]))
  return out


def _inputs(kind: str, events, size: int, dims: int, level_strides, level_fractions=None):
  import jax.numpy as jnp  # noqa: PLC0415

  import jsparse3d as js  # noqa: PLC0415
  from jsparse3d import data  # noqa: PLC0415
  x, y = data.collate(events, level_strides=level_strides, level_fractions=level_fractions)
  voxels = int(x.num_valid)
  if kind == "sparse":
    return x, jnp.asarray(y), voxels
  shape = (size, size, 1) if dims == 2 else (size,) * 3
  grid = js.ops.to_dense(x, spatial_shape=shape, batch_size=len(events))
  lab = js.ops.to_dense(x.replace(feats=jnp.asarray(y + 1, jnp.float32)[:, None]), spatial_shape=shape,
                        batch_size=len(events))[..., 0].astype(jnp.int32) - 1  # -1: empty voxels, not scored
  if dims == 2:
    grid, lab = grid[:, :, :, 0], lab[:, :, :, 0]
  return grid, lab, voxels


def child(spec: dict) -> dict:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import optax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from jsparse3d import models  # noqa: PLC0415
  from jsparse3d import training  # noqa: PLC0415

  kind, size, dims, batch = spec["kind"], spec["size"], spec.get("dims", 3), spec.get("batch", 1)
  m = spec["model"]
  # Capacity plans for the coarse levels (their tensor strides; z stays 1 in the 2D layout).
  strides = tuple((2 ** i, 2 ** i, 2 ** i if dims == 3 else 1) for i in range(1, m["depth"]))
  t0 = time.perf_counter()
  events = _events(size, range(100, 100 + batch), dims) if not spec.get("compile_only") else None
  if kind == "sparse":
    model = models.UResNet(**m, spatial_dims=dims, rngs=nnx.Rngs(0))
    x, y, voxels = _inputs(kind, events, size, dims, strides)
  else:
    model = models.DenseUResNet(**m, spatial_dims=dims, rngs=nnx.Rngs(0))
    if spec.get("compile_only"):
      shape = (batch, size, size, 1) if dims == 2 else (batch, size, size, size, 1)
      x, y, voxels = jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:-1], jnp.int32), None
    else:
      x, y, voxels = _inputs(kind, events, size, dims, strides)
  forward = _uresnet_learning.forward_of(kind)
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  step = training.make_train_step(graphdef, num_classes=5, num_events=batch, ignore_index=-1, forward=forward)
  t1 = time.perf_counter()
  compiled = step.lower(state, x, y).compile()
  compile_s = time.perf_counter() - t1
  mem = compiled.memory_analysis()
  out = dict(spec, voxels=voxels, compile_s=compile_s, setup_s=t1 - t0,
             xla_mb=(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                     - mem.alias_size_in_bytes) / 2 ** 20,
             xla_temp_mb=mem.temp_size_in_bytes / 2 ** 20)
  if spec.get("compile_only"):
    return out
  fwd = jax.jit(lambda state, x: forward(nnx.merge(graphdef, state)[0], x)[0])
  out["forward_all_ms"] = times_ms(fwd, state, x, warmup=1, reps=spec["reps"])
  holder = [state]

  def train():
    holder[0], loss, _ = compiled(holder[0], x, y)
    return loss
  out["step_all_ms"] = times_ms(train, warmup=1, reps=spec["reps"])
  out["forward_ms"], out["step_ms"] = (statistics.median(out[k]) for k in ("forward_all_ms", "step_all_ms"))
  out["peak_rss_mb"] = peak_rss_mb()
  return out


def voxels_child(spec: dict) -> dict:
  """Sparse forward times of single events of several sizes, against their non-zero voxels (one process)."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from jsparse3d import models  # noqa: PLC0415
  from jsparse3d import training  # noqa: PLC0415

  m = spec["model"]
  model = models.UResNet(**m, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda state, x: training.sparse_logits(nnx.merge(graphdef, state), x)[0])
  strides = tuple(2 ** i for i in range(1, m["depth"]))
  rows = []
  for size in spec["sizes"]:
    for seed in range(spec["events"]):
      x, _, voxels = _inputs("sparse", _events(size, [1000 + seed], 3), size, 3, strides)
      times = times_ms(fwd, state, x, warmup=1, reps=spec["reps"])  # the warm-up compiles a new capacity bucket
      rows.append(dict(size=size, seed=1000 + seed, voxels=voxels, capacity=int(x.capacity),
                       forward_ms=statistics.median(times)))
  return dict(rows=rows)


def _run_child(spec: dict) -> dict:
  return run_child(__file__, spec, shown=("forward_ms", "step_ms", "xla_mb", "peak_rss_mb"))


PARTS = ("scaling", "voxels", "batch2d", "accuracy", "classes")

# -- the parts -------------------------------------------------------------------------------------------------


def scaling(cfg, kinds, previous) -> list[dict]:
  """The rows of ``kinds``, measured now, and the other kind's rows from ``previous``."""
  rows = [r for r in previous or [] if r["kind"] not in kinds]
  for kind in kinds:
    reps = cfg["reps"] if kind == "sparse" else cfg["dense_reps"]
    for size in cfg[kind]:
      rows.append(_run_child(dict(kind=kind, size=size, model=cfg["model"], reps=reps)))
  if "dense" in kinds:
    for size in cfg["dense_compile_only"]:
      rows.append(_run_child(dict(kind="dense", size=size, model=cfg["model"], compile_only=True)))
  return rows


def voxels(cfg) -> dict:
  import numpy as np  # noqa: PLC0415
  spec = dict(part="voxels", model=cfg["model"], sizes=cfg["voxel_sizes"], events=cfg["voxel_events"],
              reps=cfg["reps"])
  rows = _run_child(spec)["rows"]
  n = np.array([r["voxels"] for r in rows], float)
  t = np.array([r["forward_ms"] for r in rows], float)
  slope, intercept = np.polyfit(n, t, 1)
  residual = t - (slope * n + intercept)
  r2 = 1 - residual.var() / t.var()
  return dict(rows=rows, fit=dict(ms_per_kvoxel=1e3 * slope, intercept_ms=intercept, r2=r2))


def batch2d(cfg) -> list[dict]:
  """Both networks at the study's batch, the dense one compiled only (it needs more memory than this machine
  has); both timed at a batch the dense one fits, whose time scales linearly to the full batch."""
  b = cfg["batch2d"]
  common = dict(size=b["size"], dims=2, model=cfg["model"])
  return [_run_child(dict(common, kind="sparse", batch=b["batch"], reps=cfg["reps"])),
          _run_child(dict(common, kind="dense", batch=b["batch"], compile_only=True)),
          _run_child(dict(common, kind="sparse", batch=b["timed_batch"], reps=cfg["reps"])),
          _run_child(dict(common, kind="dense", batch=b["timed_batch"], reps=cfg["dense_reps"]))]


def accuracy(cfg) -> dict:
  """Part 3: both networks trained on the same events; learning curves and the speed-up to a common accuracy."""
  runs = [_run_child(dict(cfg["accuracy"], part="accuracy", kind=kind, model=cfg["model"]))
          for kind in ("sparse", "dense")]
  return dict(runs=runs, summary=_uresnet_learning.summary(runs))


def _sqrt_inverse_frequency(config: str, common, events: int) -> list[float]:
  """Class weights ``sqrt(f_max / f_c)`` (2 decimals) from the class frequencies of the first ``events`` events
  of the config's training split: a milder weighting than the per-batch inverse frequency."""
  import numpy as np  # noqa: PLC0415

  from train import configs  # noqa: PLC0415
  from train import tasks  # noqa: PLC0415
  cfg = configs.get_config(config, common)
  train_set, k = tasks.build_task(cfg).train_set, cfg["model"]["num_classes"]
  counts = sum(np.bincount(train_set[i]["labels"], minlength=k) for i in range(events))
  return [round(float(np.sqrt(counts.max() / max(n, 1))), 2) for n in counts]


def classes(cfg, runs: Path) -> dict:
  """Part 4: each variant trained by the trainer (a finished run in ``runs`` is reused as it is), then scored on
  the test split in a fresh process."""
  c = dict(cfg["classes"])
  c["variants"] = {name: overrides if overrides is not None else
                   [f"class_weights={_sqrt_inverse_frequency(c['config'], c['common'], c['frequency_events'])}"]
                   for name, overrides in c["variants"].items()}
  runs.mkdir(parents=True, exist_ok=True)
  for name, overrides in c["variants"].items():
    print(f"  training {name} ({' '.join(overrides) or 'the main job as it is'}) in {runs / name} ...", flush=True)
    run_trainer(c["config"], runs / name, c["common"] + overrides, runs / f"{name}.log")
  return _run_child(dict(c, part="classes", runs=str(runs)))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="small sizes of a small network (about a minute)")
  p.add_argument("--parts", default=",".join(PARTS))
  p.add_argument("--kinds", default="sparse,dense", help="the networks the scaling part measures (the other's "
                 "rows are kept from --out)")
  p.add_argument("--out", default=str(ROOT / "results" / "uresnet_study.json"))
  p.add_argument("--figures", default=str(ROOT / "docs" / "figures"))
  p.add_argument("--runs", default=str(ROOT / "runs" / "uresnet_study"),
                 help="workdirs of part 4's training runs (finished ones are reused)")
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    spec = json.loads(args.child)
    if spec.get("part") == "accuracy":
      result = _uresnet_learning.accuracy_child(spec, _events, _inputs)
    elif spec.get("part") == "classes":
      import _uresnet_classes  # noqa: PLC0415
      result = _uresnet_classes.classes_child(spec)
    else:
      result = voxels_child(spec) if spec.get("part") == "voxels" else child(spec)
    print(json.dumps(result))
    return
  cfg = QUICK if args.quick else FULL

  def run(part, previous):
    if part == "scaling":
      return scaling(cfg, args.kinds.split(","), previous)
    return classes(cfg, Path(args.runs)) if part == "classes" else globals()[part](cfg)
  out = Path(args.out)
  results = run_parts(args.parts, PARTS, out, quick=args.quick, cfg=cfg, run=run)
  from _study_figures import uresnet_figures  # noqa: PLC0415 - matplotlib only for the figures
  for path in uresnet_figures(results, Path(args.figures)):
    print("wrote", path)
  print("wrote", out)


if __name__ == "__main__":
  main()
