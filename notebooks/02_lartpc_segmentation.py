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
# # LArTPC semantic segmentation with a sparse U-ResNet
#
# A liquid-argon TPC records the ionisation of charged particles as 3D images of millimetre voxels, almost all
# empty. Semantic segmentation labels every non-empty voxel by what made it. Here that is the five classes of the
# U-ResNet papers (heavily ionising particles, minimum-ionising tracks, electromagnetic showers, delta rays and
# Michel electrons). This notebook:
#
# 1. generates events and looks at them,
# 2. trains a U-ResNet for a few minutes with the library's jitted train step,
# 3. scores it with a confusion matrix and per-class accuracies, looks closely at the Michel electrons, and draws
#    predictions next to the truth,
# 4. reads the same kind of events from a larcv3 file, the format of the PILArNet dataset, instead of the generator.
#
# `STEPS` and `SIZE` set the cost: the defaults take about 6 minutes on a 2-core CPU. The test suite runs
# the notebook with `JSPARSE3D_NOTEBOOK_CI=1`: tiny events and a few steps.

# %%
import os
import tempfile
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
SIZE = 64 if CI else 192        # voxels per side of the 3 mm grid
STEPS = 4 if CI else 500        # training steps of BATCH events
BATCH = 4
EVAL_EVENTS = 8 if CI else 200
NAMES = data.class_names("uresnet5")
COLOURS = np.array(["tab:purple", "tab:blue", "tab:orange", "tab:green", "tab:red"])
print(NAMES)

# %% [markdown]
# ## The events
#
# `data.SyntheticLArTPC(n, seed=...)` is a deterministic dataset of `n` generated events. Event `i` is the same
# every time, so the training, validation and test sets are just different seeds. Each event is a dict of numpy
# arrays: `coords` (voxel indices), `energy` (MeV) and `labels`.

# %%
train_set = data.SyntheticLArTPC(1_000_000, seed=0, size=SIZE)
val_set = data.SyntheticLArTPC(EVAL_EVENTS, seed=1, size=SIZE)
event = val_set[0]
counts = np.bincount(event["labels"], minlength=5)
print(f"{len(event['coords'])} voxels; per class: " + ", ".join(f"{n} {c}" for n, c in zip(NAMES, counts)))


# %%
def display(ax, coords, colours, title, size=SIZE, s=2, **scatter):
  ax.scatter(coords[:, 0], coords[:, 1], coords[:, 2], c=colours, s=s, depthshade=False, **scatter)
  ax.set(xlim=(0, size), ylim=(0, size), zlim=(0, size), xlabel="x", ylabel="y", zlabel="z", title=title)
  ax.tick_params(labelsize=7)


def class_legend(fig):
  handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=n) for n, c in zip(NAMES, COLOURS)]
  fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False)


fig = plt.figure(figsize=(12, 5.5))
ax = fig.add_subplot(1, 2, 1, projection="3d")
display(ax, event["coords"], COLOURS[event["labels"]], "by class")
ax = fig.add_subplot(1, 2, 2, projection="3d")
scatter = ax.scatter(*event["coords"].T, c=np.log10(event["energy"]), s=2, cmap="viridis", depthshade=False)
ax.set(xlim=(0, SIZE), ylim=(0, SIZE), zlim=(0, SIZE), xlabel="x", ylabel="y", zlabel="z", title="by energy")
ax.tick_params(labelsize=7)
fig.colorbar(scatter, ax=ax, shrink=0.6, pad=0.1, label="log10(energy / MeV)")
class_legend(fig)
fig.suptitle(f"Validation event 0: {len(event['coords'])} voxels of {SIZE}^3 (3 mm)")
plt.show()

# %% [markdown]
# The classes are far from balanced: tracks and showers make most voxels, Michel electrons and delta rays a few
# percent. This is why the per-class accuracies matter, not only the overall one. With the plain cross-entropy a
# U-ResNet learns to never call a voxel Michel (docs/uresnet_study.md: 0 of 1.1 million test voxels after the
# main job's 1,200 steps). Weighting each class's loss by one over the square root of its share gives the rare
# classes more say for a little overall accuracy; of the remedies the study compared (with full inverse-frequency
# weights and a focal loss), it gave the best mIoU. The shares here come from the validation events, never from
# test events.

# %%
voxels = np.concatenate([val_set[i]["labels"] for i in range(len(val_set))])
share = np.bincount(voxels, minlength=5) / len(voxels)
weights = 1 / np.sqrt(np.maximum(share, 1e-3))
weights = (weights / np.sum(share * weights)).astype(np.float32)   # the average voxel weighs 1
print("share of voxels: " + ", ".join(f"{n} {s:.1%}" for n, s in zip(NAMES, share)))
print("loss weights:    " + ", ".join(f"{n} {w:.2f}" for n, w in zip(NAMES, weights)))
per_event = len(voxels) / len(val_set)
print(f"voxels per event: {per_event:.0f} of {SIZE ** 3:,} ({per_event / SIZE ** 3:.3%})")

# %% [markdown]
# ## Batches
#
# `data.collate` packs events into one `SparseTensor` (the batch index is the first coordinate) padded to a
# capacity chosen from a few buckets, so that only a handful of shapes ever compile. `level_strides` plans the
# capacity of each coarser level of the U-Net from the batch's own coordinates, so deep levels do not carry the
# finest level's padding. `data.Loader` draws batches in a seeded order on a background thread.

# %%
levels = dict(level_strides=(2, 4, 8, 16))
x, y = data.collate([train_set[i] for i in range(BATCH)], **levels)
print(f"batch: {int(x.num_valid)} voxels, capacity {x.capacity}; labels {y.shape}, -1 on padding")
loader = data.Loader(train_set, BATCH, seed=0, num_steps=STEPS, collate_fn=data.collate, **levels)

# %% [markdown]
# ## The model and the training step
#
# `models.UResNet` is the sparse U-ResNet of the papers (depth 5, 16 filters: 2.74 M parameters). The library's
# `training.make_train_step` returns a jitted pure function `step(state, x, y) -> (state, loss, confusion)`;
# `state` is the model and the optimizer's state, split off with Flax NNX. The loss is the weighted cross-entropy
# over the non-empty voxels, averaged per event.

# %%
model = js.models.UResNet(in_features=1, num_classes=5, filters=8 if CI else 16, depth=3 if CI else 5,
                          rngs=nnx.Rngs(0))
schedule = optax.warmup_cosine_decay_schedule(0.0, 4e-3, min(100, STEPS // 5), STEPS, 2e-4)
optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
graphdef, state = nnx.split((model, optimizer))
step = training.make_train_step(graphdef, num_classes=5, num_events=BATCH, class_weights=jnp.asarray(weights))
print(f"{sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))):,} parameters")

# %%
history, losses, seen, t0 = [], [], training.ConfusionMatrix(5), time.perf_counter()
for i, (x, y) in enumerate(loader):
  state, loss, cm = step(state, x, y)
  losses.append(loss)
  seen.add(cm)
  if (i + 1) % max(1, STEPS // 20) == 0 or i + 1 == STEPS:
    history.append((i + 1, float(np.mean(losses)), seen.nonzero_accuracy()))
    losses, seen = [], training.ConfusionMatrix(5)
    print(f"step {i + 1:4d}  loss {history[-1][1]:.3f}  accuracy (recent batches) {history[-1][2]:.1%}  "
          f"{time.perf_counter() - t0:5.0f} s")
nnx.update((model, optimizer), state)

# %%
steps_, losses, accs = np.array(history).T
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
ax[0].plot(steps_, losses, "o-")
ax[0].set(xlabel="step", ylabel="training loss of recent batches", yscale="log")
ax[1].plot(steps_, 100 * accs, "o-")
ax[1].set(xlabel="step", ylabel="non-zero accuracy of recent batches (%)")
for a in ax:
  a.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Evaluation
#
# In evaluation mode the batch norms use their running averages. `predict` runs the model on one batch and
# returns the predicted class of every row. The non-zero accuracy counts every non-empty voxel of the validation
# events, padded rows excluded.

# %%
model.eval()
predict = nnx.jit(lambda model, x: jnp.argmax(model(x).feats, axis=-1))

cm = training.ConfusionMatrix(5)
predictions = []
for start in range(0, len(val_set), BATCH):
  events = [val_set[i] for i in range(start, min(start + BATCH, len(val_set)))]
  x, y = data.collate(events, **levels)
  pred = np.asarray(predict(model, x))
  n = int(x.num_valid)
  cm.add(np.asarray(training.confusion_matrix(jax.nn.one_hot(pred, 5), y, 5)))
  batch_ids, ends = np.asarray(x.coords[:n, 0]), 0
  for b, ev in enumerate(events):  # rows are sorted by (event, x, y, z): back to each event's voxel order
    rows = np.flatnonzero(batch_ids == b)
    order = np.lexsort(ev["coords"].T[::-1])
    p = np.empty(len(order), np.int32)
    p[order] = pred[rows]
    predictions.append(p)
print(f"non-zero accuracy on {len(val_set)} validation events: {cm.nonzero_accuracy():.2%}")
for name, acc in zip(NAMES, cm.per_class_accuracy()):
  print(f"  {name:<10} {'-' if acc is None else f'{acc:.1%}'}")

# %%
norm = training.row_normalised(cm.counts)
fig, ax = plt.subplots(figsize=(5.5, 4.8))
im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
for i in range(5):
  for j in range(5):
    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
            color="white" if norm[i, j] > 0.6 else "black")
ax.set(xticks=range(5), yticks=range(5), xlabel="predicted", ylabel="true",
       title="Confusion matrix (rows sum to 1)")
ax.set_xticklabels(NAMES, rotation=30)
ax.set_yticklabels(NAMES)
fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Michel electrons
#
# A Michel electron is the electron from a stopped muon's decay: a short, kinked track at the muon's end, tens of
# MeV. It is a rare class (about 1% of voxels) and the one the U-ResNet papers single out. Per event with a
# Michel electron: how many of its voxels are found, and what the missed ones are taken for. It is also the class
# a U-ResNet learns last: after this notebook's 500 steps most Michel voxels still go to the muon's track (MIP)
# or to showers; after the main job's 1,200 steps with these weights, 57% are found (docs/uresnet_study.md).
# Try `STEPS = 1500`.

# %%
michel = NAMES.index("Michel")
rows = []
for ev, p in zip((val_set[i] for i in range(len(val_set))), predictions):
  truth = ev["labels"] == michel
  if truth.any():
    rows.append((truth.sum(), (p[truth] == michel).mean(), np.bincount(p[truth], minlength=5)))
if rows:
  found = np.array([r[1] for r in rows])
  missed = sum(r[2] for r in rows)
  missed[michel] = 0
  print(f"{len(rows)} of {len(val_set)} events have a Michel electron ({np.mean([r[0] for r in rows]):.0f} voxels "
        f"on average); per event, the share of its voxels found: median {np.median(found):.0%}, "
        f"{np.mean(found >= 0.9):.0%} of events above 90%")
  print("missed Michel voxels predicted as: " + ", ".join(f"{n} {c}" for n, c in zip(NAMES, missed) if c))

# %% [markdown]
# Prediction against truth for a validation event with a Michel electron (the smallest event with at least 20
# Michel voxels, so the picture stays readable), the whole event and zoomed on the Michel electron:

# %%
sizes = [(np.sum(val_set[i]["labels"] == michel), len(val_set[i]["labels"])) for i in range(len(val_set))]
candidates = [i for i, (m, _) in enumerate(sizes) if m >= 20] or [int(np.argmax([m for m, _ in sizes]))]
i = min(candidates, key=lambda i: sizes[i][1])
ev, p = val_set[i], predictions[i]
wrong = p != ev["labels"]
fig = plt.figure(figsize=(13, 8.5))
for k, (colours, title) in enumerate(((COLOURS[ev["labels"]], "truth"), (COLOURS[p], "prediction"))):
  display(fig.add_subplot(2, 3, k + 1, projection="3d"), ev["coords"], colours, title)
ax = fig.add_subplot(2, 3, 3, projection="3d")
display(ax, ev["coords"][~wrong], "lightgray", f"mistakes ({wrong.mean():.1%} of voxels) in black", alpha=0.3)
ax.scatter(*ev["coords"][wrong].T, c="k", s=4, depthshade=False)
if sizes[i][0]:
  m = ev["coords"][ev["labels"] == michel]
  crowd = (np.abs(m[:, None] - m[None]).max(axis=-1) <= 8).sum(axis=1)   # Michel voxels within 8 of each
  centre = m[np.argmax(crowd)]                                             # the middle of the largest one
  for k, (colours, title) in enumerate(((COLOURS[ev["labels"]], "truth"), (COLOURS[p], "prediction"))):
    ax = fig.add_subplot(2, 3, 4 + k, projection="3d")
    near = np.all(np.abs(ev["coords"] - centre) < 15, axis=1)
    display(ax, ev["coords"][near], colours[near], f"{title}, 30^3 voxels around a Michel electron", s=12)
    ax.set(xlim=(centre[0] - 15, centre[0] + 15), ylim=(centre[1] - 15, centre[1] + 15),
           zlim=(centre[2] - 15, centre[2] + 15))
class_legend(fig)
fig.suptitle(f"Validation event {i}: {len(p)} voxels, {sizes[i][0]} of them Michel")
plt.tight_layout(rect=(0, 0.04, 1, 0.97))
plt.show()

# %% [markdown]
# ## Reading a larcv3 file instead
#
# Real data comes in files. PILArNet, the public LArTPC dataset of these papers, is stored as larcv3 HDF5 files,
# and `data.Larcv3Dataset` reads them lazily and with random access. Here a few validation events are written
# to such a file and read back. On real files, point `Larcv3Dataset` at them with the producer names they use,
# for example `sparse3d="data", labels="semantics"`. PILArNet's five classes are the `larcv5` scheme
# (`data.class_names("larcv5")`), so a model for them is trained on those labels. The trainer does the same
# from the command line: `python -m train --config uresnet_lartpc --set data.kind=larcv3 data.train_path=...`.

# %%
folder = tempfile.mkdtemp()
path = data.write_larcv3(os.path.join(folder, "events.h5"), [val_set[i] for i in range(BATCH)], size=SIZE)
files = data.Larcv3Dataset(path, sparse3d="data", labels="semantics")
print(f"{path}: {len(files)} events; event 0 keys {sorted(files[0])}")
x, y = data.collate([files[i] for i in range(len(files))], **levels)
pred = np.asarray(predict(model, x))
n = int(x.num_valid)
same = np.mean(np.concatenate(predictions[:BATCH]) == np.concatenate([val_set[i]["labels"] for i in range(BATCH)]))
print(f"accuracy on the file's events: {np.mean(pred[:n] == np.asarray(y[:n])):.2%} "
      f"(the same events from the generator: {same:.2%})")
