"""The training loop: data, model, optimizer, jitted or pmapped steps, orbax checkpoints, exact resume, metrics.

Resume is the default: the latest checkpoint in ``<workdir>/checkpoints`` restores the model, the optimizer (with
its step) and the model's RNG streams, and the data loader restarts at that step, so an interrupted run ends with
the same parameters as an uninterrupted one. SIGTERM and SIGINT save a checkpoint before exiting.

``batch_size`` is the global batch: with ``devices`` local devices and ``jax.process_count()`` processes, each
device takes ``batch_size / (devices * processes)`` events of it, batch norms are synchronised over all devices,
and the step equals one device holding the whole batch (to float rounding). Process 0 writes the metrics
(``metrics.jsonl``, TensorBoard files under ``tensorboard/``, ``confusion.png``); all processes checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import shutil
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
from jsparse3d import nn
from jsparse3d import training
from train import tasks

AXIS = "devices"


def enable_compilation_cache(path=None) -> Path:
  """Turns on XLA's persistent compilation cache (process-wide), so that a rerun of the trainer loads its
  compiled steps instead of compiling them again; returns the folder.

  Args:
    path: the cache folder; default ``$JSPARSE3D_CACHE_DIR/xla`` (``~/.cache/jsparse3d/xla``).
  """
  from jsparse3d.ops import _native  # the library's one cache location
  path = Path(path) if path else _native.cache_dir() / "xla"
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  # Every program, however quick to compile: with a time threshold, a program near it is written by one run and
  # not another, and a loaded machine makes reruns compile again.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  return path


def build_schedule(cfg):
  o = cfg["optimizer"]
  peak, steps = o["learning_rate"], cfg["steps"]
  warmup = min(o["warmup_steps"], steps // 2)
  if o["decay"] == "constant":
    return optax.warmup_constant_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), peak * o["final_fraction"])


def build_optimizer(cfg):
  """Adam (AdamW with weight decay) or SGD with momentum, on the config's warmup + cosine / constant schedule.

  Adam is :func:`jsparse3d.training.fused_adam`: optax's update and state, in one native call on a CPU (a train
  step compiles in a third less time)."""
  o, schedule = cfg["optimizer"], build_schedule(cfg)
  if o["kind"] == "adam":
    return training.fused_adam(schedule, weight_decay=o["weight_decay"])
  sgd = optax.sgd(schedule, momentum=o["momentum"] or None, nesterov=o["nesterov"])
  # PyTorch's SGD weight decay: added to the gradient before the momentum.
  return optax.chain(optax.add_decayed_weights(o["weight_decay"]), sgd) if o["weight_decay"] else sgd


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


@contextlib.contextmanager
def _older_objects_frozen():
  """Keeps the objects alive when the loop starts (the model, the optimizer state, jax's and flax's caches) out of
  the cyclic garbage collector's full collections while it runs. Each step allocates enough Python objects for a few
  collections, and a full one walked all of those: 200 ms in a U-ResNet benchmark process, about once in 60 steps
  (2 ms frozen). Reference counting still frees every object; `gc.unfreeze` on the way out returns them to the
  collector."""
  gc.collect()
  gc.freeze()
  try:
    yield
  finally:
    gc.unfreeze()


def _check_workdir(workdir) -> Path:
  workdir = Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write_probe"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ValueError(
        f"workdir {workdir} is not writable ({e.strerror}); pass --workdir to a folder you can write.") from None
  return workdir


class Layout:
  """How the global batch splits over processes and local devices."""

  def __init__(self, cfg, devices: int):
    self.devices, self.processes, self.process = devices, jax.process_count(), jax.process_index()
    if devices < 1:
      raise ValueError(f"devices must be positive, got {devices}.")
    local = jax.local_devices()
    if devices > len(local):
      raise ValueError(f"--devices {devices} asks for more than the {len(local)} local {local[0].platform} devices; "
                       "on CPU, python -m train sets XLA_FLAGS=--xla_force_host_platform_device_count for you, other "
                       "code must set it before importing jax.")
    shards = devices * self.processes
    if cfg["batch_size"] % shards:
      raise ValueError(f"config {cfg['name']!r}: batch_size {cfg['batch_size']} must be a multiple of devices x "
                       f"processes = {shards}.")
    self.per_process = cfg["batch_size"] // self.processes
    self.per_device = self.per_process // devices
    self.pmap = shards > 1

  def loader(self, dataset, task, *, training=False, **kw):
    """Batches of this process: with pmap, each leaf has a leading axis of the local devices. ``training`` adds
    the task's augmentation."""
    collate_fn, collate_kwargs = task.batching(training)
    loader = data.Loader(dataset, self.per_process, process_index=self.process, process_count=self.processes,
                         devices=self.devices, transform=task.transform_for(training), collate_fn=collate_fn,
                         **collate_kwargs, **kw)
    if self.pmap and self.devices == 1:  # one local device of several processes: the Loader adds no axis
      return (jax.tree.map(lambda v: np.asarray(v)[None], batch) for batch in loader)
    return loader

  def replicate(self, tree):
    if not self.pmap:
      return tree
    return jax.tree.map(lambda v: jnp.stack([v] * self.devices), tree)  # pmap shards the leading axis

  def first(self, tree):
    return jax.tree.map(lambda v: v[0], tree) if self.pmap else tree


def _meet(name: str, minutes: int = 10) -> None:
  """Waits until every process gets here, through the coordination service.

  The first CPU collective (gloo) gives up if the processes reach it more than 30 s apart, which slow starts on a
  loaded machine can exceed; meeting first here (with a generous timeout) makes them reach it together.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # the coordination client: no public barrier API in jax 0.10-0.11
  distributed.global_state.client.wait_at_barrier(f"jsparse3d_{name}", minutes * 60 * 1000)


def _to_saveable(tree):
  """Host numpy copies (what every process can write), with PRNG keys as their raw key data."""
  def leaf(v):
    if jax.dtypes.issubdtype(getattr(v, "dtype", None), jax.dtypes.prng_key):
      v = jax.random.key_data(v)
    return np.asarray(v)
  return jax.tree.map(leaf, tree)


def _from_saved(saved, like):
  def leaf(v, ref):
    if jax.dtypes.issubdtype(getattr(ref, "dtype", None), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(jnp.asarray(v), impl=jax.random.key_impl(ref))
    return jnp.asarray(v)
  return jax.tree.map(leaf, saved, like)


def check_targets(y, cfg, task, what: str) -> None:
  """Class labels (and instance ids, with an instance loss) of a host batch, checked before the step."""
  labels = y["labels"] if isinstance(y, dict) else y
  training.check_labels(labels, cfg["model"]["num_classes"], task.ignore_index, what=what)
  if isinstance(y, dict):
    training.check_instances(y["instances"], cfg["instance_loss"]["max_instances"], what=f"instance ids of {what}")


def eval_loader(dataset, task, layout, cfg):
  """Every event of ``dataset`` once, in order, as batches: the last may hold fewer events (none dropped)."""
  steps = -(-len(dataset) // cfg["batch_size"])
  if steps < 1:
    raise ValueError(f"config {cfg['name']!r}: the eval split {dataset!r} holds no events.")
  return layout.loader(dataset, task, shuffle=False, num_steps=steps, prefetch=0, drop_remainder=False)


def evaluate(eval_step, state, dataset, task, layout, cfg):
  """Loss and confusion over every event of ``dataset`` (see :func:`eval_loader`)."""
  cm = training.ConfusionMatrix(cfg["model"]["num_classes"])
  losses, weights = [], []
  global_batch = cfg["batch_size"]
  for step, (x, y) in enumerate(eval_loader(dataset, task, layout, cfg)):
    check_targets(y, cfg, task, "evaluation labels")
    loss, counts = eval_step(state, x, y)
    losses.append(float(layout.first(loss)))  # the mean over this batch's events
    weights.append(min(global_batch, len(dataset) - step * global_batch))
    cm.add(layout.first(counts))
  return float(np.average(losses, weights=weights)), cm


class _Writer:
  """metrics.jsonl and TensorBoard scalars, written by process 0 only."""

  def __init__(self, workdir: Path, names, active: bool):
    self.path, self.names, self.active = workdir / "metrics.jsonl", names, active
    self.tb = None
    if active:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=30)

  def record(self, split, step, loss, cm, **extra):
    rec = dict(split=split, step=int(step), loss=float(loss), nonzero_accuracy=cm.nonzero_accuracy(),
               per_class_accuracy=cm.per_class_accuracy(), miou=cm.miou(), per_class_precision=cm.precision(),
               per_class_f1=cm.f1(), mean_f1=cm.mean_f1(), counted=cm.total,
               ignored=cm.num_ignored, **extra)
    if not self.active:
      return rec
    with self.path.open("a") as f:
      f.write(json.dumps(rec) + "\n")
    for key in ("loss", "nonzero_accuracy", "miou", "mean_f1", *extra):
      if rec[key] is not None:
        self.tb.add_scalar(f"{split}/{key}", rec[key], step)
    for name, acc in zip(self.names, rec["per_class_accuracy"]):
      if acc is not None:
        self.tb.add_scalar(f"{split}/accuracy/{name}", acc, step)
    return rec

  def close(self):
    if self.tb is not None:
      self.tb.close()


def _class_table(names, cm) -> str:
  """Per class: accuracy (the recall), precision and F1."""
  cell = lambda v: f"{v:9.2%}" if v is not None else f"{'n/a':>9}"
  rows = [f"  {'class':<12} {'accuracy':>9} {'precision':>9} {'F1':>9}"]
  rows += [f"  {n:<12} {cell(a)} {cell(p)} {cell(f)}"
           for n, a, p, f in zip(names, cm.per_class_accuracy(), cm.precision(), cm.f1())]
  return "\n".join(rows)


def draw_confusion(ax, norm, names, *, cell=lambda v: f"{v:.2f}", fontsize=7, tick_rotation=45):
  """A row-normalised confusion matrix ``norm`` [K, K] on ``ax`` (rows true, columns predicted), each cell
  written with ``cell``; returns the image, for a colour bar."""
  im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
  ax.set_xticks(range(len(names)), names, **(dict(rotation=tick_rotation, ha="right") if tick_rotation else {}))
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  for i in range(len(names)):
    for j in range(len(names)):
      ax.text(j, i, cell(norm[i, j]), ha="center", va="center", fontsize=fontsize,
              color="white" if norm[i, j] > 0.5 else "black")
  return im


def save_confusion_png(path: Path, cm, names):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 4.5))
  im = draw_confusion(ax, training.row_normalised(cm.counts), names)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def train(cfg: dict, workdir, *, resume: bool = True, progress: bool = True, devices: int = 1,
          stop_after: int | None = None) -> dict:
  """Runs (or resumes) training; returns the final step, the state (host copy) and the last evaluation record.

  Args:
    cfg: from :func:`train.configs.get_config`. workdir: checkpoints, metrics and figures go here.
    resume: restore the latest checkpoint in the workdir (default).
    progress: show a progress bar (process 0).
    devices: local devices to pmap over (1: jit on the default device).
    stop_after: stop (saving a checkpoint, as on SIGTERM) after this many steps of this run; for tests.
  """
  workdir = _check_workdir(workdir)
  layout = Layout(cfg, devices)
  task = tasks.build_task(cfg)
  tasks.check_classes(cfg, task)
  model = tasks.build_model(cfg, rngs=nnx.Rngs(cfg["seed"]))
  if cfg.get("init_weights"):  # fine-tuning: weights saved by nn.save_weights (a checkpoint, if any, wins below)
    nn.load_weights(model, cfg["init_weights"])
  if layout.pmap:
    nn.sync_batch_norm(model, AXIS)
  # Under jit (one compiled program instead of a small one per parameter shape), once per optimizer config for the
  # process; build_optimizer reads the optimizer section and the step count.
  key = ("optimizer", repr(sorted(cfg["optimizer"].items())), cfg["steps"])
  optimizer = tasks.jitted_once(key, lambda m: nnx.Optimizer(m, build_optimizer(cfg), wrt=nnx.Param))(model)
  graphdef, state = nnx.split((model, optimizer))
  model.eval()
  eval_graphdef, _ = nnx.split((model, optimizer))
  model.train()
  training.release_freed_memory()  # the initialisers' compiles: the first step's compile starts from less
  fingerprint = _fingerprint(state)
  if not resume and layout.process == 0:
    _remove_earlier_run(workdir)
  _meet("start")
  ckpt = ocp.CheckpointManager((workdir / "checkpoints").absolute(),
                               options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  start = 0
  if resume and ckpt.latest_step() is not None:
    step = ckpt.latest_step()
    meta = ckpt.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("fingerprint") != fingerprint:
      raise ValueError(f"the checkpoint at {workdir / 'checkpoints'} (step {step}) is from another model or config "
                       f"({meta.get('config')!r}); use a fresh --workdir or the config that wrote it.")
    like = nnx.to_pure_dict(state)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(like))
    restored = ckpt.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    nnx.replace_by_pure_dict(state, _from_saved(restored, like))
    start = step
  kw = dict(num_classes=cfg["model"]["num_classes"], num_events=layout.per_device, forward=task.forward,
            ignore_index=task.ignore_index, axis_name=AXIS if layout.pmap else None)
  train_step = training.make_train_step(graphdef, class_weights=cfg["class_weights"],
                                        focal_gamma=cfg["focal_gamma"], instance_loss=cfg["instance_loss"], **kw)
  eval_step = training.make_eval_step(eval_graphdef, **(kw | dict(forward=task.eval_forward or task.forward)))
  state = layout.replicate(state)
  writer = _Writer(workdir, task.class_names, active=layout.process == 0)
  schedule = build_schedule(cfg)

  def save(step):
    host = nnx.to_pure_dict(layout.first(state))
    ckpt.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_saveable(host)),
        meta=ocp.args.JsonSave(dict(fingerprint=fingerprint, config=cfg["name"], step=int(step)))), force=True)
    ckpt.wait_until_finished()

  def say(message):
    if layout.process == 0:
      (bar.write if bar is not None else print)(message)
      sys.stdout.flush()

  def evaluate_and_report(split, dataset, title):
    """Evaluates ``dataset``, records it as ``split``, prints it (process 0) and draws its confusion matrix."""
    say(f"evaluating the {len(dataset)} events of the {split} split (each new batch shape compiles once)...")
    loss, cm = evaluate(eval_step, state, dataset, task, layout, cfg)
    training.release_freed_memory()
    rec = writer.record(split, step, loss, cm)
    if layout.process == 0:
      table = _class_table(task.class_names, cm) if len(task.class_names) <= 20 else ""
      print(f"\n{title}: loss {loss:.4f}, non-zero accuracy {cm.nonzero_accuracy():.2%}, mIoU {cm.miou():.3f}, "
            f"mean F1 {cm.mean_f1():.3f}\n{table}", flush=True)
      save_confusion_png(workdir / "confusion.png", cm, task.class_names)
    return rec

  def write_report():
    """The data kind's own report (calorimeters: calo_report.write) of the test split, else the eval split."""
    if task.report is None or layout.process != 0:
      return
    split, dataset = ("test", task.test_set) if task.test_set is not None else ("eval", task.eval_set)
    say(f"writing the {split} split's report (every hit scored; figures and JSON in {workdir})...")
    forward = task.eval_forward or task.forward
    predict = jax.jit(lambda st, x: forward(nnx.merge(eval_graphdef, st)[0], x))
    host = layout.first(state)
    task.report(task, lambda x: predict(host, x), dataset, workdir, split, batch_size=cfg["batch_size"])

  bar = None
  if start >= cfg["steps"]:  # a finished run: report it (and write its report again) rather than do nothing
    write_report()
    writer.close()
    ckpt.close()
    _meet("finish")
    return dict(step=start, state=layout.first(state), complete=True, stopped=None,
                **_final_records(workdir, start))
  loader = layout.loader(task.train_set, task, training=True, seed=cfg["seed"], start_step=start,
                         num_steps=cfg["steps"] - start, prefetch=2)
  lines = progress and layout.process == 0 and not sys.stdout.isatty()  # files, pipes, batch systems
  if progress and layout.process == 0 and not lines:
    from tqdm import tqdm
    bar = tqdm(total=cfg["steps"], initial=start, desc=cfg["name"], dynamic_ncols=True, file=sys.stdout)
  compiled = {}  # batch shape -> the train step compiled for it
  run_t0 = time.perf_counter()
  # Each step's loss and counts stay on the device until the next log line: reading them back at once would wait
  # for the step, and the next step's dispatch (flattening the state and the batch in Python) would no longer
  # overlap its run.
  window_loss, window_counts, window_t0, window_events = [], [], time.perf_counter(), 0
  step = start
  last = None
  with _Stop() as stop, _older_objects_frozen():
    for x, y in loader:
      check_targets(y, cfg, task, f"the labels of step {step}")
      shape = (jax.tree.structure(x), tuple(np.shape(v) for v in jax.tree.leaves((x, y))))
      if shape not in compiled:
        say(f"step {step + 1}: compiling the train step for a new batch shape ({len(compiled) + 1} so far; each "
            "shape compiles once, and a rerun loads it from the compilation cache)...")
        # Ahead of time, so that the compiler's working set is freed before the step's buffers are allocated. Not
        # across processes: there pmap's ahead-of-time executable takes every process's shards, so the step
        # compiles on its first call instead.
        compiled[shape] = train_step.lower(state, x, y).compile() if layout.processes == 1 else train_step
        training.release_freed_memory()
      state, loss, counts = compiled[shape](state, x, y)
      step += 1
      window_counts.append(layout.first(counts))
      window_loss.append(layout.first(loss))
      window_events += cfg["batch_size"]
      if step % cfg["log_every"] == 0 or step == cfg["steps"]:
        window = training.ConfusionMatrix(cfg["model"]["num_classes"])
        for c in window_counts:
          window.add(c)
        mean_loss = np.mean([float(v) for v in window_loss])
        rate = window_events / (time.perf_counter() - window_t0)
        rec = writer.record("train", step, mean_loss, window, events_per_second=rate,
                            learning_rate=float(schedule(step - 1)))
        if bar is not None:
          bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['nonzero_accuracy']:.3f}", ev_s=f"{rate:.1f}")
        elif lines:
          elapsed = time.perf_counter() - run_t0
          eta = elapsed / (step - start) * (cfg["steps"] - step)
          print(f"step {step}/{cfg['steps']}: loss {rec['loss']:.4f}, non-zero accuracy {rec['nonzero_accuracy']:.2%}"
                f", {rate:.1f} events/s, elapsed {elapsed / 60:.1f} min, about {eta / 60:.1f} min left", flush=True)
        window_loss, window_counts, window_t0, window_events = [], [], time.perf_counter(), 0
      if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
        last = evaluate_and_report("eval", task.eval_set, f"eval at step {step}")
      if step % cfg["checkpoint_every"] == 0 or step == cfg["steps"]:
        save(step)
      if bar is not None:
        bar.update(1)
      if stop.signal is not None or (stop_after is not None and step - start >= stop_after):
        if ckpt.latest_step() != step:  # not saved just above
          save(step)
        break
  if bar is not None:
    bar.close()
  test = None
  if task.test_set is not None and step == cfg["steps"]:
    test = evaluate_and_report("test", task.test_set, f"test ({len(task.test_set)} events, never used for choices)")
  if step == cfg["steps"]:
    write_report()
  writer.close()
  ckpt.close()
  # Process 0 finishes later (it draws and writes the reports); jax's shutdown barrier gives up on a process that
  # arrives much later than the others, so they leave together.
  _meet("finish")
  return dict(step=step, state=layout.first(state), eval=last, test=test, stopped=stop.signal, complete=False)


def trained_model(cfg: dict, state):
  """The model of ``cfg`` holding ``state`` (the state :func:`train` returns, of a finished run too), in eval mode
  (running batch-norm averages): for predictions after training.

  Example:
    >>> result = train(cfg, "runs/uresnet_lartpc")   # a finished run: restores it, trains nothing
    >>> model = trained_model(cfg, result["state"])
  """
  model = tasks.build_model(cfg, rngs=nnx.Rngs(cfg["seed"]))
  optimizer = nnx.Optimizer(model, build_optimizer(cfg), wrt=nnx.Param)
  model.eval()
  graphdef, _ = nnx.split((model, optimizer))
  return nnx.merge(graphdef, state)[0]


def _remove_earlier_run(workdir: Path) -> None:
  """Starting afresh (``resume=False``): the earlier run's checkpoints, metrics and TensorBoard files go, so that
  the new run can checkpoint and none of the old records mix with the new ones."""
  old = [workdir / name for name in ("checkpoints", "metrics.jsonl", "tensorboard") if (workdir / name).exists()]
  if old:
    print(f"--no-resume: removing the earlier run's {', '.join(p.name for p in old)} in {workdir}", flush=True)
  for path in old:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _final_records(workdir: Path, step: int) -> dict:
  """The last evaluation and test records of a finished run, from its metrics.jsonl."""
  found = {"eval": None, "test": None}
  path = workdir / "metrics.jsonl"
  if path.exists():
    for line in path.read_text().splitlines():
      rec = json.loads(line)
      if rec.get("split") in found and rec.get("step") == step:
        found[rec["split"]] = rec
  return found
