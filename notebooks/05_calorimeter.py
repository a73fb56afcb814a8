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
# # Calorimeter hits: noise filtering with PVCNN
#
# A high-granularity calorimeter such as CMS's HGCAL reads its cells as hits `(x, y, z, E, t)`. Most of them come
# from particle showers. Many, at these thresholds, are electronic noise: single cells just above the readout
# threshold, anywhere and at any time. Telling them apart hit by hit is a point-cloud segmentation problem. The
# MIT HGCAL study (Tang et al.) used PVCNN and SPVCNN for it, with four classes: noise, hadronic (HAD) and
# electromagnetic (EM) shower hits, and minimum-ionising (MIP) tracks of muons.
#
# This notebook generates events of the library's HGCAL-like endcap (`data.synthetic_hgcal_event`: 28 silicon
# layers behind 25 radiation lengths, then 22 layers of steel), looks at them, trains `models.PVCNN("calo")`
# for a few minutes, and scores it with the confusion matrix (by hits and by energy) and the ROC curve of the
# noise filter. The full run, with the instance head and panoptic quality, is in
# [docs/calorimeter.md](../docs/calorimeter.md) (`python -m train --config hgcal_pvcnn`).

# %%
import os
import time

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
STEPS = 3 if CI else 400           # training steps of BATCH events
BATCH = 4
EVAL_EVENTS = 4 if CI else 60
WIDTH = 0.125 if CI else 0.25      # PVCNN channel width (the full run uses 0.5)
HALF_WIDTH = 12.0 if CI else 40.0  # transverse half extent of the detector, cm (fewer hits in CI)
NAMES = data.HGCAL_CLASS_NAMES
COLOURS = np.array(["lightgray", "tab:red", "tab:blue", "tab:green"])
print(NAMES)

# %% [markdown]
# ## The hits
#
# Each event is a dict: `points` `[N, 5]` (x, y, z in cm at the cell centres, E in MIPs, t in ns), `labels`
# (0 noise, 1 HAD, 2 EM, 3 MIP) and `instances` (which particle made the hit; -1 for noise).

# %%
shot = [("electron", 40.0), ("pion", 30.0), ("muon", 10.0)]     # (kind, GeV); by default a random mix
event = data.synthetic_hgcal_event(3, particles=shot, half_width=HALF_WIDTH)
hx, hy, hz, he, ht = event["points"].T   # the hits of this event
print(f"{len(he)} hits from " + ", ".join(f"a {e:.0f} GeV {kind}" for kind, e in shot) + ", and noise")
print("hits per class: " + ", ".join(f"{n} {c}" for n, c in zip(NAMES, np.bincount(event["labels"], minlength=4))))
energies = np.bincount(event["labels"], he, 4)
print("energy per class (MIPs): " + ", ".join(f"{n} {w:.0f}" for n, w in zip(NAMES, energies)))

# %%
fig = plt.figure(figsize=(13, 5))
ax = fig.add_subplot(1, 2, 1, projection="3d")
ax.scatter(hz, hx, hy, c=COLOURS[event["labels"]], s=3 + 3 * np.log1p(he), depthshade=False)
ax.set(xlabel="z (cm, depth)", ylabel="x (cm)", zlabel="y (cm)", title="hits by class (size: log energy)")
handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=n) for n, c in zip(NAMES, COLOURS)]
ax.legend(handles=handles, loc="upper left", fontsize=8)
ax = fig.add_subplot(1, 2, 2)
for c in range(4):
  sel = event["labels"] == c
  ax.hist(he[sel], bins=np.logspace(np.log10(0.5), 3, 40), histtype="step", lw=1.5, color=COLOURS[c] if c else "gray",
          label=f"{NAMES[c]} ({sel.sum()} hits)")
ax.axvline(1.0, color="gray", ls=":", lw=1)
ax.set(xscale="log", yscale="log", xlabel="hit energy (MIPs)", ylabel="hits", title="hit energies: noise sits near "
       "the 0.5 MIP threshold, MIPs at 1")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Inputs
#
# `data.calo_features` scales x, y, z by the detector's extent into [-1, 1] (PVCNN voxelizes in that fixed frame:
# a cell is the same voxel in every event), takes the log of the energy and centres the time. Events hold
# different numbers of hits, so `data.collate_point_sets` pads them to a common size and returns a mask. Padded
# hits enter no voxel, no batch statistic and no loss.

# %%
normalise = dict(centre=(0.0, 0.0, 403.4, 12.5), scale=(HALF_WIDTH, HALF_WIDTH, 82.2, 12.5), energy_unit=1.0)


class Events:
  """HGCAL-like events with the network's features, as a dataset: ``ds[i]`` for i in range(n)."""

  def __init__(self, n, seed):
    self.raw = data.SyntheticHGCAL(n, seed=seed, half_width=HALF_WIDTH)

  def __len__(self):
    return len(self.raw)

  def __getitem__(self, i):
    return data.calo_features(self.raw[i], **normalise)


train_set, val_set = Events(100_000, seed=0), Events(EVAL_EVENTS, seed=1)
(points, mask), labels = data.collate_point_sets([train_set[i] for i in range(BATCH)], features=("feats",))
print(f"a batch: points {points.shape}, mask {mask.shape} ({mask.sum()} real hits), labels {labels.shape}")

# %% [markdown]
# ## PVCNN
#
# PVCNN's blocks each have a voxel branch (the hits averaged into a coarse 3D grid, 16^3 then 8^3 here, dense 3D
# convolutions, and the result read back at each hit by trilinear interpolation) and a point branch (a per-hit
# MLP), added together. A global feature pooled over all hits joins before the classifier.

# %%
model = js.models.PVCNN("calo", width=WIDTH, rngs=nnx.Rngs(0))
print(f"{sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))):,} parameters")


def forward(model, inputs):
  points, mask = inputs
  logits = model(points, point_mask=mask)
  b, n = mask.shape
  events = jnp.where(mask, jnp.arange(b)[:, None], -1).reshape(-1)   # -1: padding, not counted
  return logits.reshape(b * n, -1), events


schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, max(1, STEPS // 10), STEPS, 1e-4)
optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
graphdef, state = nnx.split((model, optimizer))
step = training.make_train_step(graphdef, num_classes=4, num_events=BATCH, forward=forward)
loader = data.Loader(train_set, BATCH, seed=0, num_steps=STEPS, collate_fn=data.collate_point_sets,
                     features=("feats",))
t0, seen = time.perf_counter(), training.ConfusionMatrix(4)
for i, (inputs, y) in enumerate(loader):
  state, loss, cm = step(state, inputs, y)
  seen.add(cm)
  if (i + 1) % max(1, STEPS // 10) == 0:
    print(f"step {i + 1:4d}  loss {float(loss):.3f}  accuracy (recent) {seen.nonzero_accuracy():.1%}  "
          f"{time.perf_counter() - t0:5.0f} s")
    seen = training.ConfusionMatrix(4)
nnx.update((model, optimizer), state)
model.eval()

# %% [markdown]
# ## Evaluation: confusion by hits and by energy, and the noise filter's ROC curve
#
# A calorimeter physicist cares about energy more than hit counts: a misclassified 0.6 MIP noise hit matters less
# than a misclassified 200 MIP shower core. So the confusion matrix is shown both ways
# (`training.weighted_confusion`). The noise filter is a threshold on the predicted probability that a hit is
# signal (1 - p(noise)); its ROC curve (`training.roc_curve`) shows every threshold at once.

# %%
probabilities = nnx.jit(lambda model, inputs: jax.nn.softmax(forward(model, inputs)[0], axis=-1))
prob, truth, energy = [], [], []
for start in range(0, len(val_set), BATCH):
  events = [val_set[i] for i in range(start, min(start + BATCH, len(val_set)))]
  inputs, y = data.collate_point_sets(events, features=("feats",))
  p = np.asarray(probabilities(model, inputs))
  keep = np.asarray(inputs[1]).reshape(-1)
  prob.append(p[keep])
  truth.append(np.asarray(y).reshape(-1)[keep])
  energy.append(np.concatenate([ev["points"][:, 3] for ev in events]))
prob, truth, energy = np.concatenate(prob), np.concatenate(truth), np.concatenate(energy)
predicted = prob.argmax(axis=1)
print(f"{len(val_set)} validation events, {len(truth):,} hits: accuracy {np.mean(predicted == truth):.2%}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
for ax, weights, title in ((axes[0], None, "by hits"), (axes[1], energy, "by energy")):
  norm = training.row_normalised(training.weighted_confusion(predicted, truth, 4, weights))
  ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  for i in range(4):
    for j in range(4):
      ax.text(j, i, f"{norm[i, j]:.3f}", ha="center", va="center", fontsize=9,
              color="white" if norm[i, j] > 0.6 else "black")
  ax.set(xticks=range(4), yticks=range(4), xticklabels=NAMES, yticklabels=NAMES, xlabel="predicted", ylabel="true",
         title=f"confusion {title} (rows sum to 1)")
ax = axes[2]
signal = truth != 0
lowest = 1.0
for weights, style, what in ((None, "-", "hits"), (energy, "--", "energy-weighted")):
  fpr, tpr, _ = training.roc_curve(1 - prob[:, 0], signal, weights)
  auc = training.roc_auc(1 - prob[:, 0], signal, weights)
  ax.plot(fpr, tpr, style, label=f"{what}: AUC {auc:.4f}")
  lowest = min(lowest, tpr[np.searchsorted(fpr, 1e-3)])
ax.set(xscale="log", xlim=(1e-3, 1), ylim=(np.floor(lowest * 20) / 20, 1.005),
       xlabel="noise hits kept (false positive rate)",
       ylabel="signal hits kept (true positive rate)", title="noise filter: keep a hit if 1 - p(noise) > threshold")
ax.legend(loc="lower right", fontsize=9)
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# The event from the top of the notebook (a training-set seed is fine for a picture), truth against prediction,
# with the hits the model gets wrong:

# %%
shown = data.calo_features(event, **normalise)
inputs, _ = data.collate_point_sets([shown], features=("feats",))
pred = np.asarray(probabilities(model, inputs)).argmax(-1)[:len(he)]   # one event: its hits come first
fig = plt.figure(figsize=(15, 5))
for k, (lab, title) in enumerate(((event["labels"], "truth"), (pred, "prediction"))):
  ax = fig.add_subplot(1, 3, k + 1, projection="3d")
  ax.scatter(hz, hx, hy, c=COLOURS[lab], s=3 + 3 * np.log1p(he), depthshade=False)
  ax.set(xlabel="z (cm)", ylabel="x (cm)", zlabel="y (cm)", title=title)
ax = fig.add_subplot(1, 3, 3, projection="3d")
wrong = pred != event["labels"]
ax.scatter(hz[~wrong], hx[~wrong], hy[~wrong], c="lightgray", s=2, alpha=0.3, depthshade=False)
ax.scatter(hz[wrong], hx[wrong], hy[wrong], c=COLOURS[event["labels"][wrong]], s=10, edgecolors="k", linewidths=0.3,
           depthshade=False)
ax.set(xlabel="z (cm)", ylabel="x (cm)", zlabel="y (cm)", title=f"{wrong.sum()} wrong hits, coloured by true class")
fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
plt.tight_layout(rect=(0, 0.05, 1, 1))
plt.show()
