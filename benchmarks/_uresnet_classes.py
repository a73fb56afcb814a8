"""Part 4 of the U-ResNet study: per-class behaviour of the main job's model, with and without remedies.

Each variant is the main job (``python -m train --config uresnet_lartpc``) with some ``--set`` overrides, trained
to the end by the trainer itself. This module then restores each finished run and predicts every voxel of the
test split (500 events, never used to choose anything): the confusion matrix, per-class accuracy, where Michel
electrons go, and the voxels of a few typical Michel failures for event displays.
"""

from __future__ import annotations

import numpy as np

MICHEL = 4  # uresnet5: HIP, MIP, EM shower, delta ray, Michel


def _predictions(cfg, state, task):
  """Per test event: coordinates [n, 3], energy [n], labels [n] and the model's predictions [n]."""
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from train import train_lib  # noqa: PLC0415

  model = train_lib.trained_model(cfg, state)  # eval mode, as the trainer evaluates
  predict = nnx.jit(lambda model, x: jnp.argmax(model(x).feats, axis=-1))
  events, batch = [], cfg["batch_size"]
  for start in range(0, len(task.test_set), batch):  # the trainer's test batches, in its order
    x, y = task.collate_fn([task.test_set[i] for i in range(start, min(start + batch, len(task.test_set)))],
                           **task.collate_kwargs)
    pred = np.asarray(predict(model, x))
    n = int(x.num_valid)
    coords, feats, y, pred = np.asarray(x.coords)[:n], np.asarray(x.feats)[:n, 0], np.asarray(y)[:n], pred[:n]
    for b in np.unique(coords[:, 0]):
      rows = coords[:, 0] == b
      events.append(dict(coords=coords[rows, 1:], energy=feats[rows], labels=y[rows], pred=pred[rows]))
  return events


def _confusion(events, num_classes: int) -> np.ndarray:
  counts = np.zeros((num_classes, num_classes), np.int64)
  for ev in events:
    np.add.at(counts, (ev["labels"], ev["pred"]), 1)
  return counts


def _typical_failures(events, how_many: int, min_voxels: int) -> list[int]:
  """Events whose Michel voxels the model gets mostly wrong, the ones of median Michel size among them."""
  failed = []
  for i, ev in enumerate(events):
    michel = ev["labels"] == MICHEL
    if michel.sum() >= min_voxels and np.mean(ev["pred"][michel] == MICHEL) < 0.5:
      failed.append((int(michel.sum()), i))
  failed.sort()
  middle = len(failed) // 2
  picked = failed[max(0, middle - how_many // 2):][:how_many]
  return [i for _, i in picked]


def _crop(ev, margin: int) -> np.ndarray:
  """Rows within ``margin`` voxels (x and y) of the event's Michel voxels."""
  c = ev["coords"][ev["labels"] == MICHEL]
  lo, hi = c.min(axis=0) - margin, c.max(axis=0) + margin
  return np.all((ev["coords"][:, :2] >= lo[:2]) & (ev["coords"][:, :2] <= hi[:2]), axis=1)


def classes_child(spec: dict) -> dict:
  """Restores every variant's finished run and scores it on the test split; ``spec["variants"]`` maps a name to
  its ``--set`` overrides (after ``spec["common"]``'s), ``spec["runs"]`` is the folder of their workdirs."""
  from pathlib import Path  # noqa: PLC0415

  from jsparse3d import training  # noqa: PLC0415
  from train import configs  # noqa: PLC0415
  from train import tasks  # noqa: PLC0415
  from train import train_lib  # noqa: PLC0415

  variants, per_event, out = spec["variants"], {}, dict(variants={})
  for name, overrides in variants.items():
    cfg = configs.get_config(spec["config"], spec["common"] + overrides)
    result = train_lib.train(cfg, Path(spec["runs"]) / name, progress=False)  # finished: restores, trains nothing
    if not result.get("complete"):
      raise RuntimeError(f"variant {name}: its run in {spec['runs']} had not finished; run the trainer first.")
    task = tasks.build_task(cfg)
    events = _predictions(cfg, result["state"], task)
    if len(events) != len(task.test_set):
      raise RuntimeError(f"variant {name}: {len(task.test_set) - len(events)} test events held no voxel.")
    cm = training.ConfusionMatrix(cfg["model"]["num_classes"])  # the trainer's metrics, on these counts
    cm.counts += _confusion(events, cfg["model"]["num_classes"])
    out["variants"][name] = dict(
        overrides=overrides, confusion=cm.counts.tolist(), per_class_accuracy=cm.per_class_accuracy(),
        per_class_iou=cm.iou(),
        per_class_precision=(np.diag(cm.counts) / np.maximum(cm.counts.sum(axis=0), 1)).tolist(),
        nonzero_accuracy=cm.nonzero_accuracy(), miou=cm.miou(),
        trainer_test=result["test"], events=len(events),
        michel_events=int(sum((ev["labels"] == MICHEL).any() for ev in events)))
    out["class_names"] = list(task.class_names)
    per_event[name] = events
  base = next(iter(variants))
  shown = []
  for i in _typical_failures(per_event[base], spec["displays"], spec["min_michel_voxels"]):
    keep = _crop(per_event[base][i], spec["margin"])
    ev = per_event[base][i]
    michel = ev["labels"] == MICHEL
    shown.append(dict(event=i, michel_voxels=int(michel.sum()), coords=ev["coords"][keep].tolist(),
                      energy=ev["energy"][keep].tolist(), labels=ev["labels"][keep].tolist(),
                      pred={name: per_event[name][i]["pred"][keep].tolist() for name in variants},
                      michel_accuracy={name: float(np.mean(per_event[name][i]["pred"][michel] == MICHEL))
                                       for name in variants}))
  out["displays"] = shown
  return out
