"""Part 3 of the U-ResNet study: time to accuracy. One network (sparse or dense) trained in this process.

Both networks start from bitwise the same weights (one seed), see the same events in the same order and take the
same optimiser (Adam on the main job's warm-up + cosine schedule). Every batch shape is compiled before the clock
starts, and each step is waited for, so the recorded training time is the steps' time alone. Every ``eval_every``
steps the held-out non-zero accuracy is measured (running batch-norm averages) on the same validation events.

The uniformity statistic of the study: at every step, the mean EM-shower softmax score over the EM-shower voxels of
each training image, averaged over the batch's images; its standard deviation over the steps of the second half of
training says how steadily the network scores showers (smaller: more uniform).
"""

from __future__ import annotations

import time

EM_SHOWER = 2  # uresnet5: HIP, MIP, EM shower, delta ray, Michel


def _dense_forward(model, grid):
  import jax.numpy as jnp  # noqa: PLC0415
  logits = model(grid)
  events = jnp.broadcast_to(jnp.arange(grid.shape[0]).reshape((-1,) + (1,) * (grid.ndim - 2)), grid.shape[:-1])
  return logits.reshape(-1, logits.shape[-1]), events.reshape(-1)


def forward_of(kind: str):
  """``forward(model, x) -> (logits [N, K], event of each row)`` of the sparse or dense network."""
  from jsparse3d import training  # noqa: PLC0415
  return training.sparse_logits if kind == "sparse" else _dense_forward


def _train_step(graphdef, forward, num_events: int):
  """One training step that also returns the per-image mean EM-shower score (NaN where an image has none)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from jsparse3d import training  # noqa: PLC0415

  def step(state, x, labels):
    labels = labels.reshape(-1)
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model):
      logits, events = forward(model, x)
      return training.segmentation_loss(logits, labels, events, num_events), (logits, events)

    (loss, (logits, events)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    with jax.numpy_dtype_promotion("standard"):
      optimizer.update(model, grads)
    shower = labels == EM_SHOWER
    ids = jnp.where(shower, events, num_events)
    score = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, EM_SHOWER]
    total = jax.ops.segment_sum(jnp.where(shower, score, 0.0), ids, num_segments=num_events + 1)[:num_events]
    count = jax.ops.segment_sum(shower.astype(jnp.float32), ids, num_segments=num_events + 1)[:num_events]
    return nnx.state((model, optimizer)), loss, jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)

  return jax.jit(step, donate_argnums=0)


def _level_fractions(groups, strides) -> tuple[float, ...]:
  """The share of a batch's capacity each coarser level needs, the largest over ``groups`` of events: one capacity
  plan per capacity bucket, so the sparse network compiles a handful of shapes rather than one per batch."""
  from jsparse3d import data  # noqa: PLC0415
  need = [0.0] * len(strides)
  for events in groups:
    x, _ = data.collate(events, level_strides=strides)
    need = [max(f, x.planned_capacity(s) / x.capacity) for f, s in zip(need, strides)]
  return tuple(need)


def _shape(x, y):
  import jax  # noqa: PLC0415
  return tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves((x, y)))


def accuracy_child(spec: dict, events_of, inputs_of) -> dict:
  """Trains ``spec["kind"]`` for ``spec["steps"]`` steps; returns its learning curve and EM-shower scores.

  ``events_of(size, seeds, dims)`` and ``inputs_of(kind, events, size, dims, level_strides)`` are the study's
  event generator and batch builder, so that this part sees the events the other parts see.
  """
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import optax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from jsparse3d import models  # noqa: PLC0415
  from jsparse3d import training  # noqa: PLC0415

  kind, size, dims, batch, steps = spec["kind"], spec["size"], spec["dims"], spec["batch"], spec["steps"]
  m = spec["model"]
  strides = tuple((2 ** i, 2 ** i, 2 ** i if dims == 3 else 1) for i in range(1, m["depth"]))
  t0 = time.perf_counter()
  seeds = range(spec["train_seed"], spec["train_seed"] + steps * batch)
  train_events = events_of(size, seeds, dims)
  groups = [train_events[i * batch:(i + 1) * batch] for i in range(steps)]
  val_events = events_of(size, range(spec["val_seed"], spec["val_seed"] + spec["val_events"]), dims)
  val_groups = [val_events[i:i + batch] for i in range(0, len(val_events), batch)]
  fractions = _level_fractions(groups + val_groups, strides) if kind == "sparse" else None
  batches = [inputs_of(kind, g, size, dims, strides, fractions)[:2] for g in groups]
  val_batches = [inputs_of(kind, g, size, dims, strides, fractions)[:2] for g in val_groups]
  data_s = time.perf_counter() - t0

  network = models.UResNet if kind == "sparse" else models.DenseUResNet
  model = network(**m, spatial_dims=dims, rngs=nnx.Rngs(0))
  lr = spec["learning_rate"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, spec["warmup_steps"], steps, lr * 0.05)
  optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  model.eval()
  eval_graphdef, _ = nnx.split((model, optimizer))
  forward = forward_of(kind)
  train_step = _train_step(graphdef, forward, batch)
  last = len(val_events) - batch * (len(val_batches) - 1)
  eval_steps = {n: training.make_eval_step(eval_graphdef, num_classes=5, num_events=n, forward=forward)
                for n in {batch, last}}

  t1 = time.perf_counter()  # every shape compiles before the clock starts
  compiled, eval_compiled = {}, {}
  for x, y in batches:
    if _shape(x, y) not in compiled:
      compiled[_shape(x, y)] = train_step.lower(state, x, y).compile()
  for i, (x, y) in enumerate(val_batches):
    n = last if i == len(val_batches) - 1 else batch
    if (n, _shape(x, y)) not in eval_compiled:
      eval_compiled[(n, _shape(x, y))] = eval_steps[n].lower(state, x, y).compile()
  compile_s = time.perf_counter() - t1

  def validate():
    cm = training.ConfusionMatrix(5)
    for i, (x, y) in enumerate(val_batches):
      n = last if i == len(val_batches) - 1 else batch
      cm.add(eval_compiled[(n, _shape(x, y))](state, x, y)[1])
    return cm

  curve, em, elapsed = [], [], 0.0
  for step, (x, y) in enumerate(batches):
    if step % spec["eval_every"] == 0:
      cm = validate()
      curve.append(dict(step=step, train_s=elapsed, accuracy=cm.nonzero_accuracy(),
                        per_class=cm.per_class_accuracy()))
    t = time.perf_counter()
    state, loss, score = compiled[_shape(x, y)](state, x, y)
    jax.block_until_ready(loss)
    elapsed += time.perf_counter() - t
    with np.errstate(all="ignore"):
      em.append(float(np.nanmean(np.asarray(score))) if np.isfinite(score).any() else None)
  cm = validate()
  curve.append(dict(step=steps, train_s=elapsed, accuracy=cm.nonzero_accuracy(), per_class=cm.per_class_accuracy()))
  late = [v for v in em[steps // 2:] if v is not None]
  voxels = [int(np.sum(np.asarray(y) >= 0)) for _, y in batches]
  return dict(spec, curve=curve, em_score=em, em_score_std_late=float(np.std(late)),
              em_score_mean_late=float(np.mean(late)), step_ms=1e3 * elapsed / steps, compile_s=compile_s,
              data_s=data_s, shapes=len(compiled), voxels_per_batch=float(np.mean(voxels)))


def time_to(curve: list[dict], accuracy: float) -> tuple[float | None, int | None]:
  """The training time and step at which ``curve`` first reaches ``accuracy`` (None if it never does)."""
  for point in curve:
    if point["accuracy"] >= accuracy:
      return point["train_s"], point["step"]
  return None, None


def summary(runs: list[dict]) -> dict:
  """The speed-up to a common accuracy: the best held-out accuracy both networks reach."""
  by = {r["kind"]: r for r in runs}
  common = min(max(p["accuracy"] for p in by[k]["curve"]) for k in ("sparse", "dense"))
  out = dict(common_accuracy=common, step_ratio=by["dense"]["step_ms"] / by["sparse"]["step_ms"])
  for kind, r in by.items():
    out[f"{kind}_time_s"], out[f"{kind}_steps"] = time_to(r["curve"], common)
    out[f"{kind}_final_accuracy"] = r["curve"][-1]["accuracy"]
    out[f"{kind}_em_score_std_late"] = r["em_score_std_late"]
  out["speedup_to_common"] = out["dense_time_s"] / max(out["sparse_time_s"], 1e-9)
  return out
