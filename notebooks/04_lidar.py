# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # LiDAR segmentation with SPVCNN
#
# A rotating LiDAR returns about 120,000 points per revolution: x, y, z and remission (how much light came
# back). SemanticKITTI labels every point with one of 19 classes (road, car, vegetation, person, ...).
# SPVCNN (Tang et al., ECCV 2020) segments them with two branches:
#
# - a **voxel branch**: the points are averaged into 5 cm voxels and run through a sparse U-Net (MinkUNet). It sees
#   a large context cheaply, but every point of a voxel gets the same features, and the coarse levels merge
#   whole objects into one voxel;
# - a **point branch**: per-point MLPs at full resolution. They keep each point's own position and features,
#   and are fused with the voxel branch three times: the voxel features are read at each point by trilinear
#   interpolation and added to the point features, which are averaged back into voxels for the next stage.
#
# This notebook reads a scan (the real SemanticKITTI scan 000000 when `JSPARSE3D_KITTI_SAMPLE` names a folder
# holding `000000.bin` and `000000.label`, whose licence keeps it out of this repository; a synthetic street scan
# otherwise), shows what voxelization does to it, trains SPVCNN on synthetic scans for a few minutes, and colours
# its per-point predictions.

# %%
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import jsparse3d as js
from jsparse3d import data
from jsparse3d import training

CI = os.environ.get("JSPARSE3D_NOTEBOOK_CI") == "1"
STEPS = 3 if CI else 200           # training steps of BATCH synthetic scans
BATCH = 2
BEAMS, AZIMUTHS = (16, 256) if CI else (32, 512)    # the synthetic scans' ray grid (a real HDL-64E: 64 x 2048)
VOXEL = 0.1                        # metres (SemanticKITTI models use 0.05; twice that keeps this notebook quick)
NAMES = data.SEMANTICKITTI_CLASS_NAMES           # the 19 classes of the benchmark
IGNORE = data.ignore_index("spvnas")
PALETTE = plt.cm.tab20(np.arange(19))               # one colour per class; tab20's two greys replaced, so that
PALETTE[14], PALETTE[15] = (0.1, 0.55, 0.1, 1), (0.55, 0.3, 0.1, 1)   # grey means unlabelled: vegetation, trunk

sample = Path(os.environ.get("JSPARSE3D_KITTI_SAMPLE", "/nonexistent"))
if (sample / "000000.bin").exists():
  scan = data.read_semantickitti(sample / "000000.bin", sample / "000000.label", label_map="spvnas")
  source, short = "SemanticKITTI sequence 00, scan 000000", "SemanticKITTI 000000"
else:
  scan = data.synthetic_lidar_scan(7, beams=64, azimuths=1024)
  source = "a synthetic street scan (set JSPARSE3D_KITTI_SAMPLE for the real one)"
  short = "synthetic scan"
points, labels = scan["points"], scan["labels"]
print(f"{source}: {len(points):,} points, columns x, y, z (m), remission")

# %%
def top_view(ax, xyz, colours, title, extent=30):
  near = np.all(np.abs(xyz[:, :2]) < extent, axis=1)
  size = 0.3 if near.sum() > 50_000 else 2.0    # sparse synthetic scans need larger dots to be seen
  ax.scatter(xyz[near, 0], xyz[near, 1], c=colours[near] if np.ndim(colours) else colours, s=size, linewidths=0)
  ax.set(xlim=(-extent, extent), ylim=(-extent, extent), aspect="equal", xlabel="x (m)", ylabel="y (m)", title=title)


def class_legend(fig, present):
  handles = [plt.Line2D([], [], ls="", marker="o", color=PALETTE[c], label=NAMES[c]) for c in present]
  fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)


colours = np.where((labels == IGNORE)[:, None], np.array([[0.8, 0.8, 0.8, 1]]), PALETTE[np.minimum(labels, 18)])
fig, axes = plt.subplots(1, 2, figsize=(13, 6))
top_view(axes[0], points, plt.cm.viridis(points[:, 3]), "remission (0 to 1)")
top_view(axes[1], points, colours, "labels (grey: unlabelled)")
class_legend(fig, np.unique(labels[labels != IGNORE]))
fig.suptitle(f"{source}, seen from above, 60 m x 60 m around the car")
plt.tight_layout(rect=(0, 0, 0.86, 1))
plt.show()

# %% [markdown]
# ## What voxels lose, and why the point branch
#
# At 5 cm most voxels hold a single point. The U-Net then halves the resolution four times (down to 80 cm), and
# there a voxel often holds points of several classes: a pedestrian's legs and the sidewalk, a car's wheel and
# the road. Whatever a voxel feature says applies to all its points alike. The share of points whose voxel also
# holds another class grows quickly with the voxel size:

# %%
labelled = labels != IGNORE
share = []
sizes = [0.05, 0.1, 0.2, 0.4, 0.8]
for size in sizes:
  v = np.floor(points[labelled, :3] / size).astype(np.int64)
  _, voxel = np.unique(v, axis=0, return_inverse=True)
  voxel = voxel.reshape(-1)
  lo = np.full(voxel.max() + 1, 99)
  hi = np.full(voxel.max() + 1, -1)
  np.minimum.at(lo, voxel, labels[labelled])
  np.maximum.at(hi, voxel, labels[labelled])
  mixed = lo[voxel] != hi[voxel]
  share.append(mixed.mean())
  print(f"voxel {size * 100:4.0f} cm: {voxel.max() + 1:7,} voxels for {labelled.sum():,} labelled points; "
        f"{mixed.mean():6.1%} of the points share a voxel with another class")
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot([s * 100 for s in sizes], [100 * s for s in share], "o-")
ax.set(xscale="log", xlabel="voxel size (cm)", ylabel="points in a mixed-class voxel (%)", xticks=[5, 10, 20, 40, 80],
       xticklabels=["5", "10", "20", "40", "80"], title="The resolution the voxel branch gives up")
ax.minorticks_off()
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The model and its inputs
#
# `data.collate_points` packs scans into padded point arrays: `xyz` in voxel units, the batch index of each point
# (-1 on padding) and the features (here all four columns). SPVCNN voxelizes inside the network, so the same
# call works for any voxel size. `cr` scales the channels: 0.5 is the 5.4 M-parameter model of the papers'
# tables.

# %%
model = js.models.SPVCNN(in_features=4, num_classes=19, cr=0.5, rngs=nnx.Rngs(0))
print(f"{sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))):,} parameters")
train_set = data.SyntheticLidar(10_000, seed=0, beams=BEAMS, azimuths=AZIMUTHS)
val_set = data.SyntheticLidar(4 if CI else 16, seed=1, beams=BEAMS, azimuths=AZIMUTHS)
(xyz, batch, feats), y = data.collate_points([train_set[0], train_set[1]], voxel_size=VOXEL)
print(f"a batch of 2 scans: xyz {xyz.shape}, batch {batch.shape}, feats {feats.shape}, labels {y.shape}; "
      f"{int((batch >= 0).sum()):,} real points")

# %% [markdown]
# ## Training on synthetic streets
#
# The library's jitted train step, with SPVCNN's forward: logits per point, and the scan each point belongs to.
# Unlabelled points (255) are ignored by the loss and the metrics.

# %%
def forward(model, inputs):
  xyz, batch, feats = inputs
  return model(xyz, batch, feats), batch


schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, max(1, STEPS // 10), STEPS, 1e-4)
optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
graphdef, state = nnx.split((model, optimizer))
step = training.make_train_step(graphdef, num_classes=19, num_events=BATCH, forward=forward, ignore_index=IGNORE)
loader = data.Loader(train_set, BATCH, seed=0, num_steps=STEPS, collate_fn=data.collate_points, voxel_size=VOXEL)
t0, seen = time.perf_counter(), training.ConfusionMatrix(19)
for i, (inputs, y) in enumerate(loader):
  state, loss, cm = step(state, inputs, y)
  seen.add(cm)
  if (i + 1) % max(1, STEPS // 10) == 0:
    print(f"step {i + 1:4d}  loss {float(loss):.3f}  accuracy (recent) {seen.nonzero_accuracy():.1%}  "
          f"mIoU (recent) {seen.miou():.1%}  {time.perf_counter() - t0:5.0f} s")
    seen = training.ConfusionMatrix(19)
nnx.update((model, optimizer), state)
model.eval()

# %% [markdown]
# ## Per-point predictions
#
# On held-out synthetic scans, then on the scan shown above.

# %%
predict = nnx.jit(lambda model, inputs: jnp.argmax(forward(model, inputs)[0], axis=-1))


def predict_scan(scan):
  inputs, _ = data.collate_points([scan], voxel_size=VOXEL)
  return np.asarray(predict(model, inputs))[:len(scan["points"])]


cm = training.ConfusionMatrix(19)
for i in range(len(val_set)):
  s = val_set[i]
  p = predict_scan(s)
  cm.add(np.asarray(training.confusion_matrix(jax.nn.one_hot(p, 19), s["labels"], 19, ignore_index=IGNORE)))
present = [c for c in range(19) if cm.counts[c].sum()]
ious = cm.iou()
print(f"{len(val_set)} held-out synthetic scans: accuracy {cm.nonzero_accuracy():.1%}, mIoU over the "
      f"{len(present)} classes present {cm.miou():.1%}")
print("  " + ", ".join(f"{NAMES[c]} {ious[c]:.0%}" for c in present))

# %%
held_out = val_set[0]
shown = [(held_out, "held-out synthetic scan")] + [(scan, short)] * (scan is not held_out)
fig, axes = plt.subplots(len(shown), 2, figsize=(13, 6 * len(shown)), squeeze=False)
for row, (s, title) in enumerate(shown):
  p = predict_scan(s)
  truth = np.where((s["labels"] == IGNORE)[:, None], np.array([[0.8, 0.8, 0.8, 1]]),
                   PALETTE[np.minimum(s["labels"], 18)])
  top_view(axes[row, 0], s["points"], truth, f"{title}: labels")
  ok = (p == s["labels"])[s["labels"] != IGNORE].mean()
  top_view(axes[row, 1], s["points"], PALETTE[p], f"{title}: predictions ({ok:.0%} right)")
class_legend(fig, range(19))
plt.tight_layout(rect=(0, 0, 0.86, 1))
plt.show()

# %% [markdown]
# The synthetic streets hold boxes, cylinders and spheres; the real scan holds real cars and trees. A model that
# has seen only the former for a few minutes gets the road and the large classes of a real scan roughly right and
# the rest wrong. To train on SemanticKITTI itself:
# `python -m train --config spvcnn_kitti --set data.root=/path/to/semantickitti` (see docs/guide.md).
