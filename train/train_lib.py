"""The training loop: data, model, optimizer, jitted or pmapped steps, orbax checkpoints, exact resume, metrics.

Resume is the default: the latest checkpoint in ``<workdir>/checkpoints`` restores the model, the optimizer and
the step, and the data loader restarts at that step, so an interrupted run ends with the same parameters as an
uninterrupted one. SIGTERM and SIGINT save a checkpoint before exiting.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from jsparse3d import data
from jsparse3d import models
from jsparse3d import training


def build_model(cfg, *, rngs):
  spec = dict(cfg["model"])
  kind = spec.pop("kind")
  if kind != "UResNet":
    raise ValueError(f"config {cfg['name']!r}: model kind {kind!r} is not trainable here yet; use 'UResNet'.")
  return models.UResNet(**spec, rngs=rngs)


def build_optimizer(cfg):
  o = cfg["optimizer"]
  if o["kind"] != "adam":
    raise ValueError(f"config {cfg['name']!r}: optimizer kind {o['kind']!r} is not supported; use 'adam'.")
  warmup = min(o["warmup_steps"], cfg["steps"] // 2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, o["learning_rate"], warmup, max(cfg["steps"], warmup + 1),
                                                o["learning_rate"] * o["final_fraction"])
  return optax.adam(schedule)


def build_datasets(cfg):
  d = cfg["data"]
  if d["kind"] != "synthetic_lartpc":
    raise ValueError(f"config {cfg['name']!r}: data kind {d['kind']!r} is not supported; use 'synthetic_lartpc'.")
  kw = dict(size=d["size"], scheme=d["scheme"])
  return (data.SyntheticLArTPC(d["train_events"], seed=d["train_seed"], **kw),
          data.SyntheticLArTPC(d["eval_events"], seed=d["eval_seed"], **kw))


def _fingerprint(state) -> str:
  """Identifies the model and optimizer layout (paths, shapes, dtypes), so a checkpoint of another model is refused."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  text = ";".join(f"{jax.tree_util.keystr(p)}:{getattr(v, 'shape', ())}:{getattr(v, 'dtype', type(v))}"
                  for p, v in leaves)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Stop:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.signal = None
    self._old = {}

  def __enter__(self):
    for s in (signal.SIGTERM, signal.SIGINT):
      self._old[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signal = signum

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)


def _check_workdir(workdir) -> Path:
  workdir = Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write_probe"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"workdir {workdir} is not writable ({e.strerror}); pass --workdir to a folder you can write.")
  return workdir


def evaluate(eval_step, state, dataset, cfg):
  cm = training.ConfusionMatrix(cfg["model"]["num_classes"])
  losses = []
  loader = data.Loader(dataset, cfg["batch_size"], shuffle=False, num_steps=len(dataset) // cfg["batch_size"],
                       prefetch=0)
  for x, y in loader:
    loss, counts = eval_step(state, x, jnp.asarray(y))
    losses.append(float(loss))
    cm.add(counts)
  return float(np.mean(losses)), cm


def _record(path: Path, split, step, loss, cm, **extra):
  rec = dict(split=split, step=int(step), loss=float(loss), nonzero_accuracy=cm.nonzero_accuracy(),
             per_class_accuracy=cm.per_class_accuracy(), miou=cm.miou(), **extra)
  with path.open("a") as f:
    f.write(json.dumps(rec) + "\n")
  return rec


def _class_table(cfg, cm) -> str:
  names = data.class_names(cfg["data"]["scheme"])
  rows = [f"  {n:<12} {a:7.2%}" if a is not None else f"  {n:<12}     n/a"
          for n, a in zip(names, cm.per_class_accuracy())]
  return "\n".join(rows)


def save_confusion_png(path: Path, cm, names):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  counts = cm.counts.astype(float)
  norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(5, 4.5))
  im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  for i in range(len(names)):
    for j in range(len(names)):
      ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
              color="white" if norm[i, j] > 0.5 else "black")
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def train(cfg: dict, workdir, *, resume: bool = True, progress: bool = True, stop_after: int | None = None) -> dict:
  """Runs (or resumes) training; returns the final evaluation record.

  Args:
    cfg: from :func:`train.configs.get_config`. workdir: checkpoints, metrics.jsonl and the confusion PNG go here.
    resume: restore the latest checkpoint in the workdir (default).
    progress: show a progress bar.
    stop_after: stop (saving a checkpoint, as on SIGTERM) after this many steps of this run; for tests.
  """
  workdir = _check_workdir(workdir)
  model = build_model(cfg, rngs=nnx.Rngs(cfg["seed"]))
  optimizer = nnx.Optimizer(model, build_optimizer(cfg), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  model.eval()
  eval_graphdef, _ = nnx.split((model, optimizer))
  model.train()
  fingerprint = _fingerprint(state)
  ckpt = ocp.CheckpointManager((workdir / "checkpoints").absolute(),
                               options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  start = 0
  if resume and ckpt.latest_step() is not None:
    step = ckpt.latest_step()
    meta = ckpt.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("fingerprint") != fingerprint:
      raise ValueError(f"the checkpoint at {workdir / 'checkpoints'} (step {step}) is from another model or config "
                       f"({meta.get('config')!r}); use a fresh --workdir or the config that wrote it.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
    restored = ckpt.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    nnx.replace_by_pure_dict(state, restored)
    start = step
  num_classes = cfg["model"]["num_classes"]
  kw = dict(num_classes=num_classes, num_events=cfg["batch_size"])
  train_step = training.make_train_step(graphdef, class_weights=cfg["class_weights"], **kw)
  eval_step = training.make_eval_step(eval_graphdef, **kw)
  train_set, eval_set = build_datasets(cfg)
  metrics_path = workdir / "metrics.jsonl"

  def save(step):
    ckpt.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(nnx.to_pure_dict(state)),
        meta=ocp.args.JsonSave(dict(fingerprint=fingerprint, config=cfg["name"], step=int(step)))), force=True)
    ckpt.wait_until_finished()

  loader = data.Loader(train_set, cfg["batch_size"], seed=cfg["seed"], start_step=start,
                       num_steps=cfg["steps"] - start, prefetch=2)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=cfg["steps"], initial=start, desc=cfg["name"], dynamic_ncols=True, file=sys.stdout)
  window = training.ConfusionMatrix(num_classes)
  window_loss, window_t0, window_events = [], time.perf_counter(), 0
  step = start
  last = None
  with _Stop() as stop:
    for x, y in loader:
      state, loss, counts = train_step(state, x, jnp.asarray(y))
      step += 1
      window.add(counts)
      window_loss.append(loss)
      window_events += cfg["batch_size"]
      if step % cfg["log_every"] == 0 or step == cfg["steps"]:
        rate = window_events / (time.perf_counter() - window_t0)
        rec = _record(metrics_path, "train", step, np.mean([float(v) for v in window_loss]), window,
                      events_per_second=rate)
        if bar is not None:
          bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['nonzero_accuracy']:.3f}", ev_s=f"{rate:.1f}")
        window = training.ConfusionMatrix(num_classes)
        window_loss, window_t0, window_events = [], time.perf_counter(), 0
      if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
        loss_e, cm = evaluate(eval_step, state, eval_set, cfg)
        last = _record(metrics_path, "eval", step, loss_e, cm)
        print(f"\neval at step {step}: loss {loss_e:.4f}, non-zero accuracy {cm.nonzero_accuracy():.2%}, "
              f"mIoU {cm.miou():.3f}\n{_class_table(cfg, cm)}", flush=True)
        save_confusion_png(workdir / "confusion.png", cm, data.class_names(cfg["data"]["scheme"]))
      if step % cfg["checkpoint_every"] == 0 or step == cfg["steps"]:
        save(step)
      if bar is not None:
        bar.update(1)
      if stop.signal is not None or (stop_after is not None and step - start >= stop_after):
        save(step)
        break
  if bar is not None:
    bar.close()
  ckpt.close()
  return dict(step=step, state=state, eval=last, stopped=stop.signal)
