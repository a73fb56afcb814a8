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
