"""The calorimeter report of a trained model on one split: per-hit predictions of every event, the row-normalised
confusion matrix by hits and by energy, the noise-vs-signal ROC curve and its AUC (by hits and by energy), with an
instance head the clusters' panoptic quality (IoU > 0.5 matching, by hits and by energy), and event displays;
written as ``calo_<split>.json`` and PNG figures in the run's folder."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jsparse3d import data
from jsparse3d import training

# class name -> colour in the displays (other names cycle through the default colours)
_COLOURS = {"noise": "#b0b0b0", "HAD": "#e66101", "EM": "#0571b0", "MIP": "#1a9641", "signal": "#d7191c"}


def predict_hits(task, predict, dataset, batch_size: int) -> dict:
  """Every hit of every event of ``dataset`` (none dropped), in dataset order: ``probs`` float32[H, K],
  ``labels``, ``energy`` (raw, as stored), ``instances`` (-1 where the data has none), ``event`` and, for a model
  with an instance head, ``embeddings`` float32[H, D]."""
  collate_fn, collate_kwargs = task.batching(False)
  steps = -(-len(dataset) // batch_size)
  loader = data.Loader(dataset, min(batch_size, len(dataset)), shuffle=False, num_steps=steps, prefetch=0,
                       drop_remainder=False, transform=task.transform_for(False), collate_fn=collate_fn,
                       **collate_kwargs)
  probs, labels, embeddings = [], [], []
  for x, y in loader:
    out, events = predict(x)
    logits, emb = out if isinstance(out, tuple) else (out, None)
    keep = np.asarray(events) >= 0
    probs.append(np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))[keep])
    labels.append(np.asarray(y["labels"] if isinstance(y, dict) else y).reshape(-1)[keep])
    if emb is not None:
      embeddings.append(np.asarray(emb, np.float32)[keep])
  energy, instances, event = [], [], []
  for i in range(len(dataset)):
    ev = dataset[i]
    n = len(ev["points"])
    energy.append(np.asarray(ev["points"])[:, 3])
    instances.append(np.asarray(ev.get("instances", np.full(n, -1)), np.int32))
    event.append(np.full(n, i, np.int32))
  out = {"probs": np.concatenate(probs), "labels": np.concatenate(labels), "energy": np.concatenate(energy),
         "instances": np.concatenate(instances), "event": np.concatenate(event)}
  if embeddings:
    out["embeddings"] = np.concatenate(embeddings)
  if len(out["probs"]) != len(out["energy"]):
    raise RuntimeError(f"the model scored {len(out['probs'])} hits but the split holds {len(out['energy'])}.")
  return out


def metrics(hits: dict, class_names) -> dict:
  """The report's numbers (a JSON-ready dict) from :func:`predict_hits`' arrays."""
  k = len(class_names)
  predicted = hits["probs"].argmax(axis=1)
  counted = hits["labels"] >= 0
  out = {"hits": int(counted.sum()), "events": int(hits["event"].max()) + 1 if len(hits["event"]) else 0,
         "class_names": list(class_names)}
  for name, weights in (("by_hits", None), ("by_energy", hits["energy"])):
    cm = training.weighted_confusion(predicted, hits["labels"], k, weights)
    norm = training.row_normalised(cm)
    out[name] = {"confusion": cm.tolist(), "row_normalised": norm.tolist(),
                 "per_class_accuracy": dict(zip(class_names, np.diag(norm).tolist())),
                 "accuracy": float(np.trace(cm) / max(cm.sum(), 1e-30))}
  signal = hits["labels"][counted] != 0  # class 0 is noise
  if signal.any() and (~signal).any():
    score = 1.0 - hits["probs"][counted, 0]
    for name, weights in (("by_hits", None), ("by_energy", hits["energy"][counted])):
      out[name]["noise_vs_signal_auc"] = training.roc_auc(score, signal, weights)
      fpr, tpr, _ = training.roc_curve(score, signal, weights)
      out[name]["signal_kept_at_noise_rate"] = {f"{rate:g}": float(tpr[np.searchsorted(fpr, rate, side="right") - 1])
                                                for rate in (1e-4, 1e-3, 1e-2)}
  return out


def _pad(v, rows: int, fill):
  return np.concatenate([v, np.full((rows - len(v), *v.shape[1:]), fill, v.dtype)])


def cluster_hits(hits: dict, spec: dict) -> np.ndarray:
  """Cluster ids of every hit (-1: predicted noise), event by event, from the embeddings of the hits predicted as
  signal, seeded by energy (``training.cluster_embeddings`` with ``spec["bandwidth"]``)."""
  run = jax.jit(training.cluster_embeddings, static_argnames=("bandwidth", "max_clusters"))
  ids = np.full(len(hits["event"]), -1, np.int32)
  signal = hits["probs"].argmax(axis=1) != 0
  for i in np.unique(hits["event"]):
    rows = np.flatnonzero(hits["event"] == i)
    cap = data.bucket_capacity(len(rows))  # a few padded shapes compile, not one per event
    out = run(_pad(hits["embeddings"][rows], cap, 0.0), _pad(signal[rows], cap, False),
              _pad(hits["energy"][rows], cap, 0.0),
              bandwidth=float(spec["bandwidth"]), max_clusters=int(spec["max_instances"]))
    ids[rows] = np.asarray(out)[:len(rows)]
  return ids


def cluster_metrics(hits: dict, ids: np.ndarray, class_names) -> dict:
  """Panoptic quality of the predicted clusters against the true instances, summed over events, by hits and by
  energy; and, by hits, per class (a cluster's class: the true class of most of its hits) how many true particles
  were matched and how many predicted clusters were not."""
  out = {}
  for name, weights in (("by_hits", None), ("by_energy", hits["energy"])):
    counts = []
    for i in np.unique(hits["event"]):
      rows = hits["event"] == i
      counts.append(training.panoptic_counts(ids[rows], hits["instances"][rows],
                                             None if weights is None else weights[rows]))
    out[name] = training.panoptic_quality(counts)
  per_class = {n: {"true": 0, "matched": 0, "unmatched_predicted": 0} for n in class_names}
  for i in np.unique(hits["event"]):
    rows = hits["event"] == i
    pred, truth, labels = ids[rows], hits["instances"][rows], hits["labels"][rows]
    m = training.match_clusters(pred, truth)
    for t in m["truth_ids"]:
      c = per_class[class_names[np.bincount(labels[truth == t]).argmax()]]
      c["true"] += 1
      c["matched"] += int(np.any(m["match"] == t))
    for p, match, size, void in zip(m["predicted_ids"], m["match"], m["size"], m["void"]):
      if match < 0 and void <= size / 2:  # mostly noise: not a false positive (COCO's rule)
        per_class[class_names[np.bincount(labels[pred == p]).argmax()]]["unmatched_predicted"] += 1
  out["by_class"] = per_class
  return out


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _confusion_figure(path: Path, report: dict, split: str):
  from train.train_lib import draw_confusion  # the trainer's figure, two panels here
  plt = _plt()
  names = report["class_names"]
  fig, axes = plt.subplots(1, 2, figsize=(4.2 * 2 + 1.2, 4.2), constrained_layout=True)
  for ax, key, title in zip(axes, ("by_hits", "by_energy"), ("hits", "energy-weighted")):
    im = draw_confusion(ax, np.asarray(report[key]["row_normalised"]), names, cell=lambda v: f"{100 * v:.1f}%",
                        fontsize=8, tick_rotation=0)
    ax.set_title(f"{title} ({split})")
  fig.colorbar(im, ax=axes, shrink=0.8, label="share of the true class")
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _roc_figure(path: Path, hits: dict, report: dict, split: str):
  plt = _plt()
  counted = hits["labels"] >= 0
  signal = hits["labels"][counted] != 0
  score = 1.0 - hits["probs"][counted, 0]
  fig, ax = plt.subplots(figsize=(5, 4.2), constrained_layout=True)
  low = 1.0  # the lowest true-positive rate in view: the axis starts there
  for key, weights, style in (("by_hits", None, "-"), ("by_energy", hits["energy"][counted], "--")):
    fpr, tpr, _ = training.roc_curve(score, signal, weights)
    low = min(low, tpr[np.searchsorted(fpr, 1e-4, side="right") - 1])
    label = f"{'hits' if weights is None else 'energy-weighted'}: AUC {report[key]['noise_vs_signal_auc']:.4f}"
    ax.plot(np.maximum(fpr, 1e-5), tpr, style, label=label)
  ax.set_xscale("log")
  ax.set_xlim(1e-4, 1)
  ax.set_ylim(max(0.0, np.floor(10 * low) / 10), 1.005)
  ax.set_xlabel("noise kept as signal (false-positive rate)")
  ax.set_ylabel("signal kept (true-positive rate)")
  ax.set_title(f"noise filtering, {split} split")
  ax.grid(alpha=0.3, which="both")
  ax.legend(loc="lower right")
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _views(points, display: str):
  """The projections of an event display: (x label, x values, y label, y values) per row."""
  p = points
  if display == "barrel":
    return [("phi", np.arctan2(p[:, 1], p[:, 0]), "eta", np.arcsinh(p[:, 2] / np.linalg.norm(p[:, :2], axis=1)))]
  return [("z [cm]", p[:, 2], "x [cm]", p[:, 0]), ("z [cm]", p[:, 2], "y [cm]", p[:, 1])]


def _panels(path: Path, points, columns, handles, display: str):
  """Scatter panels: one column per ``(title, colours [N], alpha [N])``, one row per projection; marker area
  grows with the log of the energy, up to a size that suits the event's hit count."""
  plt = _plt()
  from matplotlib.lines import Line2D
  views = _views(points, display)
  energy = np.log1p(np.maximum(points[:, 3], 0))
  largest = np.clip(30_000 / max(len(points), 1), 8, 60)  # sparse events get larger markers
  size = 1.5 + (largest - 1.5) * energy / max(energy.max(), 1e-9)
  fig, axes = plt.subplots(len(views), len(columns), figsize=(5.5 * len(columns), 3.6 * len(views)), squeeze=False,
                           constrained_layout=True)
  for col, (title, colours, alpha) in enumerate(columns):
    order = np.argsort(alpha, kind="stable")  # faint (noise) hits underneath
    for row, (xl, xv, yl, yv) in enumerate(views):
      ax = axes[row, col]
      ax.scatter(xv[order], yv[order], s=size[order], c=colours[order], alpha=alpha[order], linewidths=0)
      ax.set_xlabel(xl)
      ax.set_ylabel(yl)
      ax.set_title(title if row == 0 else "")
  fig.legend(handles=[Line2D([], [], ls="", marker="o", color=c, label=n) for n, c in handles],
             loc="outside right upper", fontsize=9)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _display_figure(path: Path, event: dict, predicted, class_names, display: str, split: str):
  """Hits coloured by true and by predicted class."""
  plt = _plt()
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  colour = np.array([_COLOURS.get(n, palette[c % len(palette)]) for c, n in enumerate(class_names)])
  points = np.asarray(event["points"])
  columns = [(f"{title}: {len(labels)} hits ({split} event 0)", colour[labels],
              np.where(labels == 0, 0.35, 0.85)) for labels, title in ((event["labels"], "truth"),
                                                                       (predicted, "prediction"))]
  _panels(path, points, columns, list(zip(class_names, colour)), display)


def _matched(predicted, truth):
  """Per hit, the true particle its predicted cluster matches (training.match_clusters), else -1."""
  m = training.match_clusters(predicted, truth)
  out = np.full(len(predicted), -1)
  for p, t in zip(m["predicted_ids"], m["match"]):
    out[predicted == p] = t
  return out


def _clusters_figure(path: Path, event: dict, predicted, display: str, split: str):
  """Hits coloured by true particle and by predicted cluster, a matched cluster (IoU > 0.5) in its particle's
  colour, an unmatched one black; grey: noise, and hits predicted as noise."""
  plt = _plt()
  palette = np.array(plt.get_cmap("tab10").colors)
  points = np.asarray(event["points"])
  truth = np.asarray(event.get("instances", np.full(len(points), -1)))
  matched = _matched(predicted, truth)

  def colours(ids, unmatched):
    c = np.where((ids >= 0)[:, None], palette[np.maximum(ids, 0) % len(palette)], 0.7)
    c = np.where(unmatched[:, None], 0.0, c)
    return c, np.where((ids >= 0) | unmatched, 0.85, 0.3)

  n_pred, n_true = len(np.unique(predicted[predicted >= 0])), len(np.unique(truth[truth >= 0]))
  n_matched = len(np.unique(matched[matched >= 0]))
  unmatched = (predicted >= 0) & (matched < 0)
  columns = [(f"true particles: {n_true} ({split} event 0)", *colours(truth, np.zeros(len(truth), bool))),
             (f"predicted clusters: {n_pred}, {n_matched} matched", *colours(matched, unmatched))]
  _panels(path, points, columns, [("noise / none", (0.7, 0.7, 0.7)), ("unmatched cluster", (0.0, 0.0, 0.0))],
          display)


def write(task, predict, dataset, workdir, split: str, *, class_names, display: str = "endcap",
          clustering: dict | None = None, batch_size: int = 4) -> dict:
  """Predicts every hit of ``dataset`` and writes ``calo_<split>.json``, ``calo_<split>_confusion.png``,
  ``calo_<split>_roc.png``, ``calo_<split>_event.png`` and, with ``clustering`` (the config's instance_loss),
  ``calo_<split>_clusters.png`` into ``workdir``; returns the report."""
  workdir = Path(workdir)
  hits = predict_hits(task, predict, dataset, batch_size)
  report = metrics(hits, class_names)
  ids = None
  if clustering is not None and "embeddings" in hits:
    ids = cluster_hits(hits, clustering)
    report["clusters"] = cluster_metrics(hits, ids, class_names)
  (workdir / f"calo_{split}.json").write_text(json.dumps(report, indent=1))
  _confusion_figure(workdir / f"calo_{split}_confusion.png", report, split)
  if "noise_vs_signal_auc" in report["by_hits"]:
    _roc_figure(workdir / f"calo_{split}_roc.png", hits, report, split)
  first = hits["event"] == 0
  _display_figure(workdir / f"calo_{split}_event.png", dataset[0], hits["probs"][first].argmax(axis=1), class_names,
                  display, split)
  if ids is not None:
    _clusters_figure(workdir / f"calo_{split}_clusters.png", dataset[0], ids[first], display, split)
  return report
