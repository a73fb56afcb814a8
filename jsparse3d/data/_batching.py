"""Batching: events -> one padded SparseTensor per batch, capacity from a few buckets, and a deterministic,
restartable, shardable loader with background prefetch.

A batch's capacity is the smallest bucket that holds all its voxels, so a training run compiles one program per
bucket in use, not one per batch. Buckets never truncate: a batch larger than the largest bucket gets the next
power of two (logged as a warning, since it compiles a new shape).

Order: epoch ``e`` visits the events in ``permutation(seed, e)``; global batch ``b`` of the epoch is the slice
``[b * B * P, (b + 1) * B * P)`` of it (``B`` events per process, ``P`` processes), and process ``p`` takes the
``p``-th ``B`` of them. An epoch's last, incomplete global batch is dropped (``drop_remainder=True``, for
training) or kept as a smaller batch (``drop_remainder=False``, for evaluation: every event is seen once). Step
``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, so a loader built with
``start_step=s`` continues exactly where one stopped after ``s`` steps.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable
from typing import Iterator
from typing import Sequence

import jax
import numpy as np

from jsparse3d._sparse_tensor import SparseTensor

log = logging.getLogger("jsparse3d.data")

DEFAULT_BUCKETS = tuple(sorted({int(m * 2 ** k) for k in range(10, 24) for m in (1, 1.5)}))


def bucket_capacity(num_rows: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """The smallest bucket >= ``num_rows``; beyond the largest, the next power of two (with a warning)."""
  buckets = sorted(int(b) for b in buckets)
  if not buckets or buckets[0] <= 0:
    raise ValueError(f"buckets must be positive capacities, got {buckets}.")
  i = int(np.searchsorted(buckets, num_rows))
  if i < len(buckets):
    return buckets[i]
  capacity = 1 << int(np.ceil(np.log2(max(num_rows, 1))))
  log.warning("batch of %d voxels exceeds the largest bucket %d: using capacity %d (a new shape to compile)",
              num_rows, buckets[-1], capacity)
  return capacity


def _features(event: dict, keys: Sequence[str]) -> np.ndarray:
  cols = []
  for key in keys:
    if key not in event:
      raise KeyError(f"event has no {key!r} to use as a feature; it has {sorted(event)}.")
    v = np.asarray(event[key], np.float32)
    cols.append(v[:, None] if v.ndim == 1 else v)
  return np.concatenate(cols, axis=1) if cols else np.zeros((len(event["coords"]), 0), np.float32)


def collate(events: Sequence[dict], *, features: Sequence[str] = ("energy",), labels: str | None = "labels",
            buckets: Sequence[int] = DEFAULT_BUCKETS, capacity: int | None = None, ignore_label: int = -1,
            level_strides: Sequence[int] = (), level_fractions: Sequence[float] | None = None):
  """Events -> ``(SparseTensor, labels)``: one tensor with batch index = position in ``events``.

  Args:
    events: dicts with ``coords`` int[N, 3] (unique within an event) and the ``features`` / ``labels`` keys.
    features: keys whose arrays ([N] or [N, C]) become the feature columns, in order.
    labels: key of the per-voxel class ids, or None.
    buckets: capacities to choose from (ignored if ``capacity`` is given).
    capacity: a fixed capacity (must hold the batch).
    ignore_label: label of the padded rows.
    level_strides: tensor strides of the coarser levels the model makes (``(2, 4, 8, 16)`` for a 5-level U-Net):
      their capacities are planned from these coordinates (:meth:`SparseTensor.plan_capacities`), so coarse levels
      carry little padding. Empty: every level keeps ``capacity``.
    level_fractions: optional share of ``capacity`` reserved for each of ``level_strides`` (see
      :meth:`SparseTensor.plan_capacities`), so that batches of one capacity share one plan and one compiled
      program.
  Returns:
    ``(x, y)``: ``x`` a SparseTensor with rows sorted by (batch, x, y, z); ``y`` int32[capacity] labels aligned
    with ``x``'s rows (``ignore_label`` on padding), or None.
  """
  coords, feats, labs = [], [], []
  for b, ev in enumerate(events):
    c = np.asarray(ev["coords"])
    if c.ndim != 2 or c.shape[1] != 3:
      raise ValueError(f"event {b}: coords must be [N, 3] (x, y, z), got {c.shape}.")
    order = np.lexsort((c[:, 2], c[:, 1], c[:, 0]))
    coords.append(np.concatenate([np.full((len(c), 1), b, np.int64), c[order]], axis=1))
    feats.append(_features(ev, features)[order])
    if labels is not None:
      lab = np.asarray(ev[labels])
      if lab.shape != (len(c),):
        raise ValueError(f"event {b}: {labels!r} must have one label per voxel ({len(c)}), got {lab.shape}.")
      labs.append(lab[order].astype(np.int32))
  coords = np.concatenate(coords) if coords else np.zeros((0, 4), np.int64)
  feats = np.concatenate(feats) if feats else np.zeros((0, len(features)), np.float32)
  n = len(coords)
  if capacity is None:
    capacity = bucket_capacity(n, buckets)
    log.debug("batch of %d events, %d voxels -> bucket %d", len(events), n, capacity)
  elif capacity < n:
    raise ValueError(f"capacity {capacity} cannot hold the batch's {n} voxels; no voxel is ever dropped.")
  x = SparseTensor.from_coords(coords, feats, capacity=capacity, duplicates="error")
  if level_strides:
    x = x.plan_capacities(level_strides, buckets, fractions=level_fractions)
  if labels is None:
    return x, None
  y = np.full(capacity, ignore_label, np.int32)
  y[:n] = np.concatenate(labs) if labs else np.zeros(0, np.int32)
  return x, y


def collate_voxel_points(events: Sequence[dict], *, features: Sequence[str] = ("feats",),
                         buckets: Sequence[int] = DEFAULT_BUCKETS, capacity: int | None = None,
                         point_capacity: int | None = None, level_strides: Sequence[int] = (),
                         level_fractions: Sequence[float] | None = None):
  """Voxel events with their points -> ``((x, point_rows), point_labels)``, to score a voxel model per point (as
  SemanticKITTI's mIoU is): each point takes the prediction of its voxel.

  Args:
    events: voxel events from :func:`scan_to_voxels` (``coords``, the ``features``, ``inverse`` and
      ``point_labels``).
    features, buckets, capacity, level_strides, level_fractions: as in :func:`collate` (voxel capacity).
    point_capacity: rows of the point arrays (default: the smallest bucket that holds every point).
  Returns:
    ``x`` (as :func:`collate` makes it), ``point_rows`` int32[P] (the row of ``x`` holding each point's voxel; -1
    on padding) and ``point_labels`` int32[P] (-1 on padding).
  """
  x, _ = collate(events, features=features, labels=None, buckets=buckets, capacity=capacity,
                 level_strides=level_strides, level_fractions=level_fractions)
  rows, labels, start = [], [], 0
  for b, ev in enumerate(events):
    c = np.asarray(ev["coords"])
    for key in ("inverse", "point_labels"):
      if key not in ev:
        raise KeyError(f"event {b} has no {key!r}: build voxel events with scan_to_voxels to evaluate per point.")
    order = np.lexsort((c[:, 2], c[:, 1], c[:, 0]))  # collate's row order within the event
    position = np.empty(len(c), np.int64)
    position[order] = np.arange(len(c))
    rows.append(start + position[np.asarray(ev["inverse"])])
    labels.append(np.asarray(ev["point_labels"], np.int32))
    start += len(c)
  n = sum(len(r) for r in rows)
  if point_capacity is None:
    point_capacity = bucket_capacity(n, buckets)
  elif point_capacity < n:
    raise ValueError(f"point_capacity {point_capacity} cannot hold the batch's {n} points; no point is dropped.")
  point_rows = np.full(point_capacity, -1, np.int32)
  point_labels = np.full(point_capacity, -1, np.int32)
  if n:
    point_rows[:n] = np.concatenate(rows)
    point_labels[:n] = np.concatenate(labels)
  return (x, point_rows), point_labels


def collate_points(events: Sequence[dict], *, voxel_size: float, features: Sequence[str] = ("points",),
                   labels: str | None = "labels", buckets: Sequence[int] = DEFAULT_BUCKETS,
                   capacity: int | None = None, instances: str | None = None):
  """Point clouds -> ``((xyz, batch, feats), labels)`` for point-voxel models such as SPVCNN.

  Args:
    events: dicts with ``points`` float[P, >=3] (x, y, z first, in metres) and the ``features`` / ``labels`` keys.
    voxel_size: metres per voxel; ``xyz`` is returned in voxel units (``points[:, :3] / voxel_size``).
    features: keys whose arrays become the feature columns (default: every column of ``points``).
    labels: key of the per-point class ids (kept as they are: ignored ids are handled by the losses' and metrics'
      ``ignore_index``), or None.
    buckets, capacity: point capacity, as in :func:`collate`.
    instances: key of per-point instance ids (-1: none); the targets are then ``{"labels", "instances"}``.
  Returns:
    ``xyz`` float32[C, 3], ``batch`` int32[C] (-1 on padding), ``feats`` float32[C, F] and ``labels``
    int32[C] (-1 on padding), or None.
  """
  if voxel_size <= 0:
    raise ValueError(f"voxel_size must be positive, got {voxel_size}.")
  xyz, batch, feats, labs = [], [], [], []
  for b, ev in enumerate(events):
    pts = np.asarray(ev["points"], np.float32)
    if pts.ndim != 2 or pts.shape[1] < 3:
      raise ValueError(f"event {b}: points must be [P, >=3] with x, y, z first, got {pts.shape}.")
    if not np.isfinite(pts[:, :3]).all():
      raise ValueError(f"event {b}: points hold NaN or infinite coordinates; drop them first.")
    xyz.append(pts[:, :3] / np.float32(voxel_size))
    batch.append(np.full(len(pts), b, np.int32))
    feats.append(_features(ev, features))
    if labels is not None:
      labs.append(_per_point(ev, labels, len(pts), b))
  n = sum(len(v) for v in xyz)
  if capacity is None:
    capacity = bucket_capacity(n, buckets)
  elif capacity < n:
    raise ValueError(f"capacity {capacity} cannot hold the batch's {n} points; no point is ever dropped.")
  pad = capacity - n
  num_features = feats[0].shape[1] if feats else 0
  out = (np.concatenate(xyz + [np.zeros((pad, 3), np.float32)]),
         np.concatenate(batch + [np.full(pad, -1, np.int32)]),
         np.concatenate(feats + [np.zeros((pad, num_features), np.float32)]))
  if labels is None:
    return out, None
  targets = np.concatenate(labs + [np.full(pad, -1, np.int32)])
  if instances is None:
    return out, targets
  ids = [_per_point(ev, instances, len(x), i) for i, (ev, x) in enumerate(zip(events, xyz))]
  return out, {"labels": targets, "instances": np.concatenate(ids + [np.full(pad, -1, np.int32)])}


def _per_point(event, key, n, b):
  """``event[key]`` as int32, checked to hold one label per point (``n``) of event ``b``."""
  v = np.asarray(event[key]).astype(np.int32)
  if v.shape != (n,):
    raise ValueError(f"event {b}: {key!r} must have one label per point ({n}), got {v.shape}.")
  return v


def collate_point_sets(events: Sequence[dict], *, features: Sequence[str] = ("points",), labels: str | None = "labels",
                       buckets: Sequence[int] = DEFAULT_BUCKETS, capacity: int | None = None,
                       instances: str | None = None):
  """Point sets of different sizes -> ``((points float32[B, N, F], mask bool[B, N]), labels int32[B, N])`` for
  dense point models (PVCNN with ``point_mask``): each set padded to ``N`` points, the bucket of the largest.

  Args:
    events: dicts with the ``features`` keys (per-point arrays, concatenated as columns) and ``labels``.
    buckets, capacity: ``N`` is ``capacity`` if given (it must hold the largest set; the :class:`Loader` passes
      its per-device row total, which does), else the bucket of the largest set.
    instances: key of per-point instance ids (-1: none); the targets are then ``{"labels", "instances"}``.
  Returns:
    padded points (zero rows), the mask (True on real points) and the labels (-1 on padding), or None.
  """
  rows = [_features(ev, features) for ev in events]
  largest = max((len(r) for r in rows), default=0)
  if capacity is None:
    capacity = bucket_capacity(max(largest, 1), buckets)
  elif capacity < largest:
    raise ValueError(f"capacity {capacity} cannot hold a set of {largest} points; no point is ever dropped.")
  num_features = rows[0].shape[1] if rows else 0
  points = np.zeros((len(events), capacity, num_features), np.float32)
  mask = np.zeros((len(events), capacity), bool)
  labs = np.full((len(events), capacity), -1, np.int32)
  ids = np.full((len(events), capacity), -1, np.int32)
  for b, (ev, r) in enumerate(zip(events, rows)):
    points[b, :len(r)], mask[b, :len(r)] = r, True
    if labels is not None:
      labs[b, :len(r)] = _per_point(ev, labels, len(r), b)
    if instances is not None:
      ids[b, :len(r)] = _per_point(ev, instances, len(r), b)
  if labels is None:
    return (points, mask), None
  return (points, mask), (labs if instances is None else {"labels": labs, "instances": ids})


def _rows(event: dict) -> int:
  return len(event["coords"] if "coords" in event else event["points"])


class Loader:
  """Batches of a dataset (anything with ``len`` and ``[i]`` returning event dicts), in a deterministic order.

  Iterating yields ``(x, y)`` as ``collate_fn`` returns them, or with ``devices > 1`` a pytree whose leaves have
  a leading device axis (each device's share collated to the same capacity, ready for ``jax.pmap``).

  Args:
    dataset: the events. batch_size: events per process per step (split evenly over ``devices``).
    seed: the order's seed. shuffle: permute each epoch (else dataset order).
    start_step: the first step to produce (exact resume). num_steps: stop after this many steps (None: forever).
    process_index, process_count: this process's share of each global batch.
    devices: local devices to split the batch over.
    prefetch: batches prepared ahead on a background thread (0: none).
    transform: optional ``fn(event, rng) -> event`` applied per event (augmentation), with an rng seeded by
      (seed, epoch, event index), so augmented batches are reproducible too.
    collate_fn: ``fn(events, capacity=None, **collate_kwargs) -> (x, y)``: :func:`collate` (voxel events with
      ``coords``), :func:`collate_points` (point clouds with ``points``) or your own.
    drop_remainder: drop each epoch's incomplete last global batch (True; the count is logged), or keep it as a
      smaller batch (False; some processes or devices may then get fewer events, or none).
    collate_kwargs: passed to ``collate_fn``.
  """

  def __init__(self, dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True, start_step: int = 0,
               num_steps: int | None = None, process_index: int = 0, process_count: int = 1, devices: int = 1,
               prefetch: int = 2, transform: Callable | None = None, collate_fn: Callable = collate,
               drop_remainder: bool = True, **collate_kwargs):
    if batch_size < 1 or batch_size % devices:
      raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of devices ({devices}).")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index must be in 0..{process_count - 1}, got {process_index}.")
    global_batch = batch_size * process_count
    if len(dataset) < global_batch:
      raise ValueError(f"the dataset has {len(dataset)} events, fewer than one global batch ({global_batch}).")
    self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
    self.start_step, self.num_steps = start_step, num_steps
    self.process_index, self.process_count, self.devices = process_index, process_count, devices
    self.prefetch, self.transform = prefetch, transform
    self.collate_fn, self.collate_kwargs = collate_fn, collate_kwargs
    self.drop_remainder = drop_remainder
    self._epoch_order: tuple = (None, None)  # (epoch, its order), see _order
    full, rest = divmod(len(dataset), global_batch)
    self.steps_per_epoch = full + (1 if rest and not drop_remainder else 0)
    if rest and drop_remainder:
      log.info("each epoch drops its last %d of %d events (an incomplete global batch of %d); pass "
               "drop_remainder=False to keep them", rest, len(dataset), global_batch)

  def indices(self, step: int) -> np.ndarray:
    """Dataset indices of this process's events at ``step`` (fewer, or none, in a kept remainder batch)."""
    epoch, b = divmod(step, self.steps_per_epoch)
    start = (b * self.process_count + self.process_index) * self.batch_size
    return self._order(epoch)[start:start + self.batch_size]

  def _order(self, epoch: int) -> np.ndarray:
    """The dataset order of ``epoch``, kept for the epoch's steps: permuting a large dataset (the synthetic one has
    a million events) took 15 ms, a quarter of each batch's preparation."""
    if self._epoch_order[0] != epoch:
      n = len(self.dataset)
      order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
      self._epoch_order = (epoch, order)
    return self._epoch_order[1]

  def batch(self, step: int):
    """The batch of ``step`` (what iteration yields at that step)."""
    epoch = step // self.steps_per_epoch
    events = []
    for i in self.indices(step):
      ev = self.dataset[int(i)]
      if self.transform is not None:
        ev = self.transform(ev, np.random.default_rng([self.seed, epoch, int(i)]))
      events.append(ev)
    if self.devices == 1:
      return self.collate_fn(events, **self.collate_kwargs)
    per = self.batch_size // self.devices
    shares = [events[d * per:(d + 1) * per] for d in range(self.devices)]
    kwargs = dict(self.collate_kwargs)
    buckets = kwargs.pop("buckets", DEFAULT_BUCKETS)
    if "capacity" not in kwargs:  # one capacity for all devices, so the shares stack
      kwargs["capacity"] = bucket_capacity(max(sum(_rows(ev) for ev in share) for share in shares), buckets)
    if self.collate_fn is collate_voxel_points and "point_capacity" not in kwargs:
      kwargs["point_capacity"] = bucket_capacity(max(sum(len(ev["inverse"]) for ev in share) for share in shares),
                                                 buckets)
    parts = _common_plan([self.collate_fn(share, **kwargs) for share in shares])
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(v) for v in leaves]), *parts)

  def __iter__(self) -> Iterator:
    stop = None if self.num_steps is None else self.start_step + self.num_steps
    steps = iter(range(self.start_step, stop)) if stop is not None else _count(self.start_step)
    if self.prefetch <= 0:
      for s in steps:
        yield self.batch(s)
      return
    yield from _prefetched(self.batch, steps, self.prefetch)


def _common_plan(parts):
  """Device shares with one capacity plan (the largest of each level), so that they stack. The tensor is the
  first element of each share's inputs (``(x, y)`` or ``((x, point_rows), y)``)."""
  nested = [isinstance(p[0], tuple) for p in parts]
  tensors = [p[0][0] if n else p[0] for p, n in zip(parts, nested)]
  if not all(isinstance(t, SparseTensor) and t.capacities for t in tensors):
    return parts
  plan = {}
  for t in tensors:
    for stride, cap in t.capacities:
      plan[stride] = max(plan.get(stride, 0), cap)
  merged = tuple(sorted(plan.items()))
  out = []
  for t, p, n in zip(tensors, parts, nested):
    t = t.replace(capacities=merged)
    out.append(((t, *p[0][1:]), *p[1:]) if n else (t, *p[1:]))
  return out


def _count(start):
  while True:
    yield start
    start += 1


def _prefetched(make, steps, depth):
  """Runs ``make(step)`` on a background thread, ``depth`` ahead; errors re-raise in the consumer."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for s in steps:
        if stop.is_set():
          return
        q.put((s, make(s)))
      q.put((None, done))
    except BaseException as e:  # handed to the consumer
      q.put((None, e))

  t = threading.Thread(target=work, daemon=True)
  t.start()
  try:
    while True:
      _, item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while t.is_alive():  # unblock a producer waiting on a full queue
      try:
        q.get_nowait()
      except queue.Empty:
        t.join(timeout=0.01)
