"""PVCNN against its point-only baseline PointNet (Liu et al., "Point-Voxel CNN for Efficient 3D Deep Learning",
NeurIPS 2019; the "AutoML for 3D Deep Learning" talk), on this library and this CPU.

Networks (``NETWORKS``): PVCNN at full width and at a quarter of its channels (the narrow version the paper timed
against PointNet on edge GPUs), and PointNet with its T-Nets. All take xyz and normals of 2,048-point clouds.
Parts (``--parts``, default both):

  throughput  objects per second of inference (eval mode, one batch of ``batch`` clouds, median of ``reps`` calls
              after a compiling one) and of training (forward, loss, backward, Adam), MACs per object
              (``jsparse3d.nn.count_macs``) and the process's peak RSS; each network in a fresh process.
  accuracy    the ``trained`` networks, each trained by the trainer (``python -m train``) for the same steps of
              the same batches of synthetic part shapes (an equal budget of objects), then scored on the held-out
              shapes with ShapeNet-part's protocol (``jsparse3d.training.part_ious``: per object, the mean IoU
              over its category's parts; instance mIoU = the mean over objects). The held-out shapes choose
              nothing.

  python benchmarks/pvcnn_study.py                  # about 30 minutes on 2 cores
  python benchmarks/pvcnn_study.py --quick --out /tmp/pvcnn.json --figures /tmp/figs --runs /tmp/runs
  python benchmarks/pvcnn_study.py --shapenet-root data/shapenet_part --out results/pvcnn_shapenet.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _study import ROOT
from _study import run_child
from _study import run_parts
from _study import run_trainer

from _timing import peak_rss_mb
from _timing import times_ms

# name -> (trainer config, its --set overrides)
NETWORKS = {"PVCNN": ("pvcnn_shapenet", []), "PVCNN 0.25xC": ("pvcnn_shapenet", ["model.width=0.25"]),
            "PointNet": ("pointnet_shapenet", [])}
# ``trained``: the networks the accuracy part trains (full-width PVCNN takes 13 s a step here: timed only).
FULL = dict(networks=NETWORKS, trained=["PVCNN 0.25xC", "PointNet"], points=2048, batch=8, reps=5, steps=150,
            eval_every=50, eval_shapes=128)
QUICK = dict(networks={"PVCNN 0.125xC": ("pvcnn_shapenet", ["model.width=0.125"]),
                       "PointNet 0.125xC": ("pointnet_shapenet", ["model.width=0.125"])},
             trained=["PVCNN 0.125xC", "PointNet 0.125xC"], points=128, batch=2, reps=1, steps=2, eval_every=2,
             eval_shapes=2)
PARTS = ("throughput", "accuracy")


def _sets(spec: dict, network: str) -> list[str]:
  """The trainer overrides of ``network``: its own, the data (ShapeNet-part where ``spec["data_root"]`` names the
  release, else the synthetic shapes), the cloud size and the batch."""
  data = ["data.kind=shapenet_part", f"data.root={spec['data_root']}"] if spec.get("data_root") else [
      "data.kind=synthetic_shapes"]
  return [*spec["networks"][network][1], *data, f"data.num_points={spec['points']}", f"batch_size={spec['batch']}"]


def _config(spec: dict, network: str, extra=()):
  from train import configs  # noqa: PLC0415
  return configs.get_config(spec["networks"][network][0], [*_sets(spec, network), *extra])


def throughput_child(spec: dict) -> dict:
  import jax  # noqa: PLC0415
  import optax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  import jsparse3d as js  # noqa: PLC0415
  from jsparse3d import training  # noqa: PLC0415
  from train import tasks  # noqa: PLC0415

  cfg = _config(spec, spec["network"])
  task = tasks.build_task(cfg)
  batch = spec["batch"]
  (points, one_hot), labels = task.collate_fn([task.eval_set[i] for i in range(batch)], **task.collate_kwargs)
  model = tasks.build_model(cfg, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  train_graphdef, state = nnx.split((model, optimizer))
  model.eval()
  macs = js.nn.count_macs(model, points, one_hot)["total"] / batch
  graphdef, _ = nnx.split((model, optimizer))
  infer = jax.jit(lambda state, x: task.forward(nnx.merge(graphdef, state)[0], x)[0])
  t = time.perf_counter()
  jax.block_until_ready(infer(state, (points, one_hot)))
  compile_s = time.perf_counter() - t
  forward = times_ms(infer, state, (points, one_hot), warmup=0, reps=spec["reps"])
  step = training.make_train_step(train_graphdef, num_classes=cfg["model"]["num_classes"], num_events=batch,
                                  forward=task.forward)
  holder = [state]

  def train():
    holder[0], loss, _ = step(holder[0], (points, one_hot), labels)
    return loss
  steps = times_ms(train, warmup=1, reps=spec["reps"])
  params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return dict(network=spec["network"], params=int(params), macs_per_object=macs, compile_s=compile_s,
              forward_all_ms=forward, step_all_ms=steps,
              inference_objects_per_s=batch / (statistics.median(forward) / 1e3),
              training_objects_per_s=batch / (statistics.median(steps) / 1e3), peak_rss_mb=peak_rss_mb())


def accuracy_child(spec: dict) -> dict:
  """Restores every network's finished run and scores its held-out shapes with the ShapeNet-part protocol."""
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from jsparse3d import data  # noqa: PLC0415
  from jsparse3d import training  # noqa: PLC0415
  from train import tasks  # noqa: PLC0415
  from train import train_lib  # noqa: PLC0415

  infer = nnx.jit(lambda model, x: model(*x))
  out = {}
  for network in spec["trained"]:
    cfg = _config(spec, network, _budget(spec))
    result = train_lib.train(cfg, Path(spec["runs"]) / _folder(network), progress=False)
    if not result.get("complete"):
      raise RuntimeError(f"{network}: its run had not finished; run the trainer first.")
    task = tasks.build_task(cfg)
    model = train_lib.trained_model(cfg, result["state"])
    ious, shapes, correct, total = [], [], 0, 0
    for start in range(0, len(task.eval_set), spec["batch"]):
      events = [task.eval_set[i] for i in range(start, min(start + spec["batch"], len(task.eval_set)))]
      x, labels = task.collate_fn(events, **task.collate_kwargs)
      logits = np.asarray(infer(model, x))
      cats = np.array([ev["shape"] for ev in events])
      ious.append(training.part_ious(logits, labels, cats, data.SHAPENET_PARTS_PER_CATEGORY))
      shapes.append(cats)
      correct += int(np.sum(logits.argmax(-1) == labels))
      total += labels.size
    ious, shapes = np.concatenate(ious), np.concatenate(shapes)
    curve = [r for r in map(json.loads, (Path(spec["runs"]) / _folder(network) / "metrics.jsonl").read_text()
                            .splitlines()) if r["split"] == "eval"]
    out[network] = dict(instance_miou=float(ious.mean()),
                        category_miou=float(np.mean([ious[shapes == c].mean() for c in np.unique(shapes)])),
                        point_accuracy=correct / total, shapes=len(ious),
                        eval_curve=[dict(step=r["step"], accuracy=r["nonzero_accuracy"], miou=r["miou"])
                                    for r in curve])
  return out


def _budget(spec: dict) -> list[str]:
  return [f"steps={spec['steps']}", f"eval_every={spec['eval_every']}", f"checkpoint_every={spec['steps']}",
          f"data.synthetic.eval_events={spec['eval_shapes']}"]


def _folder(network: str) -> str:
  return network.replace(" ", "_").replace(".", "")


def _run_child(spec: dict) -> dict:
  return run_child(__file__, spec, shown=("inference_objects_per_s", "training_objects_per_s", "peak_rss_mb"))


def throughput(cfg) -> dict:
  return {network: _run_child(dict(cfg, part="throughput", network=network)) for network in cfg["networks"]}


def accuracy(cfg, runs: Path, previous=None) -> dict:
  """Each network trained by the trainer for the same budget (a finished run in ``runs`` is reused), its wall
  time recorded (a reused run keeps the time in ``previous``), then all scored in a fresh process."""
  runs.mkdir(parents=True, exist_ok=True)
  wall = {}
  for network in cfg["trained"]:
    print(f"  training {network} ({cfg['steps']} steps of {cfg['batch']} shapes) ...", flush=True)
    reused = (runs / _folder(network) / "checkpoints" / str(cfg["steps"])).exists()
    seconds = run_trainer(cfg["networks"][network][0], runs / _folder(network), _sets(cfg, network) + _budget(cfg),
                          runs / f"{_folder(network)}.log")
    wall[network] = None if reused else seconds  # the whole trainer process
  scores = _run_child(dict(cfg, part="accuracy", runs=str(runs)))
  for network, s in scores.items():
    s["train_process_s"] = wall[network] if wall[network] is not None else (previous or {}).get(network, {}).get(
        "train_process_s")
  return scores


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="tiny networks and clouds (about two minutes)")
  p.add_argument("--parts", default=",".join(PARTS))
  p.add_argument("--out", default=str(ROOT / "results" / "pvcnn_study.json"))
  p.add_argument("--figures", default=str(ROOT / "docs" / "figures"))
  p.add_argument("--runs", default=str(ROOT / "runs" / "pvcnn_study"), help="workdirs of the training runs "
                 "(finished ones are reused)")
  p.add_argument("--shapenet-root", help="train and score on the ShapeNet-part release in this folder (its val "
                 "split held out) instead of the synthetic shapes; its runs go to RUNS/shapenet_part")
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    spec = json.loads(args.child)
    print(json.dumps(throughput_child(spec) if spec["part"] == "throughput" else accuracy_child(spec)))
    return
  cfg = dict(QUICK if args.quick else FULL, data_root=args.shapenet_root)
  runs = Path(args.runs) / "shapenet_part" if args.shapenet_root else Path(args.runs)
  results = run_parts(args.parts, PARTS, Path(args.out), quick=args.quick, cfg=cfg, run=lambda part, previous: (
      throughput(cfg) if part == "throughput" else accuracy(cfg, runs, previous)))
  from _study_figures import pvcnn_figures  # noqa: PLC0415 - matplotlib only for the figures
  for path in pvcnn_figures(results, Path(args.figures)):
    print("wrote", path)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
