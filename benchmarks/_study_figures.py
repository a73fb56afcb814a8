"""Figures of the model studies (``uresnet_study.py``), drawn from their JSON results with matplotlib."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

SPARSE, DENSE = "tab:blue", "tab:orange"


def uresnet_figures(results: dict, folder: Path) -> list[Path]:
  """The PNGs of whichever parts ``results`` holds; returns their paths."""
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  if "scaling" in results:
    paths += [_scaling_time(results["scaling"], folder / "uresnet_scaling_time.png"),
              _scaling_memory(results["scaling"], folder / "uresnet_scaling_memory.png")]
  if "voxels" in results:
    paths.append(_voxels(results["voxels"], folder / "uresnet_time_vs_voxels.png"))
  if "accuracy" in results:
    paths += [_learning(results["accuracy"], folder / "uresnet_learning_curves.png"),
              _em_scores(results["accuracy"], folder / "uresnet_em_scores.png")]
  if "classes" in results:
    paths.append(_confusions(results["classes"], folder / "uresnet_confusion.png"))
    if results["classes"]["displays"]:
      paths.append(_michel_displays(results["classes"], folder / "uresnet_michel_failures.png"))
  return paths


def _save(fig, ax, path: Path) -> Path:
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _rows(rows, kind, key):
  picked = sorted((r for r in rows if r["kind"] == kind and r.get(key) is not None), key=lambda r: r["size"])
  return [r["size"] for r in picked], [r[key] for r in picked]


def _side_axis(ax, rows):
  sizes = sorted({r["size"] for r in rows})
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xticks(sizes)
  ax.set_xticklabels([str(s) for s in sizes])
  ax.minorticks_off()
  ax.set_xlabel("image side (voxels; the image is side$^3$)")
  ax.grid(True, which="major", alpha=0.3)


def _scaling_time(rows, path: Path) -> Path:
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for kind, color in (("sparse", SPARSE), ("dense", DENSE)):
    for key, style, label in (("forward_ms", "o-", "forward"), ("step_ms", "s--", "training step")):
      x, y = _rows(rows, kind, key)
      ax.plot(x, [v / 1e3 for v in y], style, color=color, label=f"{kind}, {label}")
  for r in rows:  # what the sparse network's cost follows
    if r["kind"] == "sparse" and r.get("forward_ms"):
      ax.annotate(f"{r['voxels']:,}", (r["size"], r["forward_ms"] / 1e3), xytext=(0, -12), textcoords="offset points",
                  ha="center", fontsize=7, color=SPARSE)
  lowest = min(r["forward_ms"] for r in rows if r.get("forward_ms")) / 1e3
  highest = max(r.get("step_ms") or 0 for r in rows) / 1e3
  ax.set_ylim(lowest / 2, highest * 2)  # room for the labels under the lowest points
  ax.text(0.98, 0.03, "numbers: the event's non-zero voxels", transform=ax.transAxes, ha="right", fontsize=7,
          color=SPARSE)
  _side_axis(ax, rows)
  ax.set_ylabel("seconds per event (one event per batch)")
  ax.set_title("U-ResNet time per event against image size (2-core CPU)")
  return _save(fig, ax, path)


def _scaling_memory(rows, path: Path) -> Path:
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for kind, color in (("sparse", SPARSE), ("dense", DENSE)):
    run = [r for r in rows if r["kind"] == kind and not r.get("compile_only")]
    x, y = _rows(run, kind, "xla_mb")
    ax.plot(x, [v / 1024 for v in y], "o-", color=color, label=f"{kind}, XLA compiled memory")
    x, y = _rows(run, kind, "peak_rss_mb")
    ax.plot(x, [v / 1024 for v in y], "^:", color=color, label=f"{kind}, process peak RSS")
    x, y = _rows([r for r in rows if r["kind"] == kind and r.get("compile_only")], kind, "xla_mb")
    if x:
      ax.plot(x, [v / 1024 for v in y], "o", mfc="none", color=color, label=f"{kind}, XLA memory it would need")
  _side_axis(ax, rows)
  ax.axhline(24, color="gray", lw=0.8, ls="--")
  ax.annotate("this machine's 24 GiB", (ax.get_xlim()[0], 24), xytext=(4, 3), textcoords="offset points",
              fontsize=8, color="gray")
  ax.set_ylabel("GiB, training step of one event")
  ax.set_title("U-ResNet training memory against image size")
  return _save(fig, ax, path)


def _voxels(part, path: Path) -> Path:
  rows, fit = part["rows"], part["fit"]
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  markers = dict(zip(sorted({r["size"] for r in rows}), "os^Dv"))
  for size, marker in markers.items():
    pick = [r for r in rows if r["size"] == size]
    ax.plot([r["voxels"] for r in pick], [r["forward_ms"] for r in pick], marker, color=SPARSE, ls="none",
            label=f"{size}$^3$ events")
  n = [0, max(r["voxels"] for r in rows) * 1.05]
  ax.plot(n, [fit["intercept_ms"] + fit["ms_per_kvoxel"] * v / 1e3 for v in n], "-", color="gray",
          label=f"fit: {fit['intercept_ms']:.0f} ms + {fit['ms_per_kvoxel']:.2f} ms per 1,000 voxels "
                f"($R^2$ {fit['r2']:.3f})")
  ax.set_xlim(left=0)
  ax.set_ylim(bottom=0)
  ax.set_xlabel("non-zero voxels in the event")
  ax.set_ylabel("sparse forward, ms")
  ax.set_title("Sparse U-ResNet: time follows the non-zero voxels, not the volume")
  ax.grid(True, alpha=0.3)
  return _save(fig, ax, path)


def _learning(part, path: Path) -> Path:
  runs = {r["kind"]: r for r in part["runs"]}
  common = part["summary"]["common_accuracy"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
  for kind, color in (("sparse", SPARSE), ("dense", DENSE)):
    curve = runs[kind]["curve"][1:]  # from the first evaluation after training began: log axes
    axes[0].plot([p["train_s"] for p in curve], [100 * p["accuracy"] for p in curve], "o-", ms=3, color=color,
                 label=f"{kind} ({runs[kind]['step_ms']:.0f} ms per step)")
    axes[1].plot([p["step"] for p in curve], [100 * p["accuracy"] for p in curve], "o-", ms=3, color=color,
                 label=kind)
    t = part["summary"][f"{kind}_time_s"]
    if t is not None:
      axes[0].plot([t], [100 * common], "*", ms=12, color=color, mec="black", mew=0.5)
  for ax in axes:
    ax.axhline(100 * common, color="gray", lw=0.8, ls="--")
    ax.grid(True, alpha=0.3)
  axes[0].set_xscale("log")
  axes[0].set_xlabel("training time, s (steps only; log scale)")
  axes[0].set_ylabel("held-out non-zero accuracy, %")
  axes[0].set_title(f"the sparse network reaches {100 * common:.1f}% (dashed line, stars) "
                    f"{part['summary']['speedup_to_common']:.0f}x sooner", fontsize=10)
  axes[1].set_xlabel("training step")
  axes[1].set_title("the same runs against steps", fontsize=10)
  first = runs["sparse"]
  fig.suptitle(f"U-ResNet, 2D {first['size']} x {first['size']} px, batch {first['batch']}: sparse against dense, "
               "same events, same weights at start", fontsize=11)
  axes[1].legend(fontsize=8)
  return _save(fig, axes[0], path)


def _em_scores(part, path: Path) -> Path:
  import numpy as np  # noqa: PLC0415
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for run, color in zip(sorted(part["runs"], key=lambda r: r["kind"] != "sparse"), (SPARSE, DENSE)):
    scores = np.array([np.nan if v is None else v for v in run["em_score"]])
    ax.plot(np.arange(1, len(scores) + 1), scores, lw=0.6, alpha=0.8, color=color,
            label=f"{run['kind']}: std over the second half {run['em_score_std_late']:.3f}")
  ax.axvline(len(part["runs"][0]["em_score"]) / 2, color="gray", lw=0.8, ls="--")
  ax.set_ylim(0, 1)
  ax.set_xlabel("training step")
  ax.set_ylabel("mean EM-shower score on the step's shower voxels")
  ax.set_title("How uniformly each network scores EM showers while training", fontsize=10)
  ax.grid(True, alpha=0.3)
  return _save(fig, ax, path)


TITLES = {"cross_entropy": "cross-entropy (the main job)", "inverse_frequency": "inverse-frequency class weights",
          "sqrt_inverse_frequency": "square-root inverse-frequency weights", "focal_loss": "focal loss, gamma 2"}
CLASS_COLORS = ("tab:purple", "tab:blue", "tab:orange", "tab:green", "tab:red")


def _fraction(value) -> str:
  return "n/a" if value is None else f"{value:.2f}"  # None: the class is absent from the labels


def _voxels_text(n) -> str:
  return f"{int(n):,} voxel" + ("" if n == 1 else "s")


def _confusions(part, path: Path) -> Path:
  import numpy as np  # noqa: PLC0415
  names, variants = part["class_names"], part["variants"]
  fig, axes = plt.subplots(1, len(variants), figsize=(4.4 * len(variants), 5.0))
  for ax, (name, v) in zip(np.atleast_1d(axes), variants.items()):
    counts = np.array(v["confusion"], float)
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(names)):
      for j in range(len(names)):
        ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_title(f"{TITLES.get(name, name)}\nnon-zero accuracy {100 * v['nonzero_accuracy']:.1f}%, "
                 f"mIoU {v['miou']:.3f}\nMichel IoU {_fraction(v['per_class_iou'][-1])}; "
                 f"{_voxels_text(counts[:, -1].sum())} called Michel, {100 * v['per_class_precision'][-1]:.0f}% right",
                 fontsize=8.5)
  np.atleast_1d(axes)[0].set_ylabel("true class (each row sums to 100%)")
  fig.suptitle(f"U-ResNet on the {next(iter(variants.values()))['events']} test events: where each class's voxels "
               "go (%)", fontsize=11)
  fig.tight_layout(rect=(0, 0, 1, 0.95))
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def _michel_displays(part, path: Path) -> Path:
  import numpy as np  # noqa: PLC0415
  from matplotlib.patches import Patch  # noqa: PLC0415
  names, shown, variants = part["class_names"], part["displays"], list(part["variants"])
  columns = ["truth"] + variants
  fig, axes = plt.subplots(len(shown), len(columns), figsize=(3.3 * len(columns), 3.2 * len(shown)), squeeze=False)
  for row, ev in zip(axes, shown):
    c = np.array(ev["coords"])
    order = np.argsort(c[:, 2])  # deeper voxels drawn first, nearer ones over them
    for ax, column in zip(row, columns):
      lab = np.array(ev["labels"] if column == "truth" else ev["pred"][column])
      ax.scatter(c[order, 0], c[order, 1], c=[CLASS_COLORS[k] for k in lab[order]], s=6, marker="s", lw=0)
      ax.set_aspect("equal")
      ax.set_xticks([])
      ax.set_yticks([])
      if column == "truth":
        ax.set_ylabel(f"test event {ev['event']}\n{ev['michel_voxels']} Michel voxels", fontsize=8)
        ax.set_title("truth", fontsize=9)
      else:
        ax.set_title(f"{TITLES.get(column, column)}\nMichel voxels right: {100 * ev['michel_accuracy'][column]:.0f}%",
                     fontsize=8)
  fig.legend(handles=[Patch(color=col, label=n) for n, col in zip(names, CLASS_COLORS)], loc="lower center",
             ncol=len(names), fontsize=8, frameon=False)
  fig.suptitle("Typical Michel failures of the main job (x-y projection around the Michel electron, 3 mm voxels)",
               fontsize=10)
  fig.tight_layout(rect=(0, 0.04, 1, 0.97))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# Published (Liu et al., NeurIPS 2019): ShapeNet-part instance mIoU and objects/s on an edge GPU.
PUBLISHED_PVCNN = {"PVCNN 0.25xC": (85.1, 19.9), "PointNet": (83.7, 8.2)}
NETWORK_COLORS = {"PVCNN": "tab:blue", "PVCNN 0.25xC": "tab:cyan", "PointNet": "tab:red"}


def _network_color(network: str) -> str:
  return NETWORK_COLORS.get(network, "tab:blue" if network.startswith("PVCNN") else "tab:red")


def pvcnn_figures(results: dict, folder: Path) -> list[Path]:
  """The PVCNN-against-PointNet figure, once both parts are in ``results``."""
  folder.mkdir(parents=True, exist_ok=True)
  if "throughput" not in results or "accuracy" not in results:
    return []
  path = folder / "pvcnn_vs_pointnet.png"
  speed, acc = results["throughput"], results["accuracy"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
  ax = axes[0]
  for network, score in acc.items():
    color = _network_color(network)
    x, y = speed[network]["inference_objects_per_s"], 100 * score["instance_miou"]
    ax.plot([x], [y], "o", ms=9, color=color, label=f"{network}: this CPU, synthetic shapes")
    ax.annotate(f"{network}\n{speed[network]['macs_per_object'] / 1e9:.2f} GMAC", (x, y), xytext=(6, -4),
                textcoords="offset points", fontsize=7)
    if network in PUBLISHED_PVCNN:
      py, px = PUBLISHED_PVCNN[network]
      ax.plot([px], [py], "s", ms=9, mfc="none", mew=1.5, color=color, label=f"{network}: published, edge GPU, "
              "ShapeNet-part")
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("inference, objects per second (log scale)")
  ax.set_ylabel("instance mIoU, %")
  ax.set_title("Accuracy against speed", fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)
  ax = axes[1]
  for network, score in acc.items():
    curve = score["eval_curve"]
    ax.plot([r["step"] for r in curve], [100 * r["accuracy"] for r in curve], "o-", color=_network_color(network),
            label=network)
  ax.set_xlabel(f"training step (batch {results['config']['batch']}; the same shapes for every network)")
  ax.set_ylabel("held-out point accuracy, %")
  ax.set_title("Equal training budgets", fontsize=10)
  ax.grid(True, alpha=0.3)
  fig.suptitle(f"PVCNN against PointNet, part segmentation of {results['config']['points']:,}-point clouds",
               fontsize=11)
  return [_save(fig, ax, path)]
