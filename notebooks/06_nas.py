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
# # 3D-NAS: one supernet, many U-ResNets
#
# SPVNAS (Tang et al., ECCV 2020) trains one network, the *supernet*, whose every layer can run narrower and
# whose every stage can run shallower, sharing one set of weights. A *subnet* picks a width per stage and a depth
# per stage. After training, an evolutionary search looks for the subnet that scores best under a cost budget,
# without training anything again. On SemanticKITTI it found a subnet as accurate as MinkowskiNet at an eighth of
# its MACs.
#
# This notebook does it for the sparse U-ResNet on synthetic LArTPC events: it trains a small supernet, shows what
# a subnet is, counts MACs over real kernel-map pairs, builds a latency model of this machine, searches with
# evolution and with random search, and exports the winner as a plain `UResNet`. The full run is
# `python -m train.nas --config uresnet_nas_lartpc` ([docs/nas.md](../docs/nas.md)).

# %%
import os
import time

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import jsparse3d as js
from jsparse3d import data
from jsparse3d import nas
from jsparse3d import training

CI = os.environ.get("JSPARSE3D_NOTEBOOK_CI") == "1"
SIZE = 64 if CI else 128           # events in a SIZE^3 volume
STEPS = 3 if CI else 800           # supernet training steps of BATCH events
BATCH = 4
VAL_EVENTS = 8 if CI else 32
EVALUATIONS = 6 if CI else 20      # subnets scored per search
SEEDS = (0,) if CI else (0, 1)     # searches per method

# %% [markdown]
# ## The supernet
#
# `nas.ElasticUResNet` is a plain `UResNet` at its largest widths and depths, plus a table saying which layers each
# width and each block belong to. Level `i` has up to `16 (i + 1)` channels here (the main job's U-ResNet, one
# level shallower) and may keep 1/2, 3/4 or all of them; each level keeps 1 or 2 residual blocks per side.

# %%
supernet = nas.ElasticUResNet(filters=8 if CI else 16, depth=4, reps=2, rngs=nnx.Rngs(0))
space = supernet.space
print(f"{space.size():,} subnets")
for name, widths, depths in zip(space.width_names, space.width_choices, space.depth_choices):
  print(f"  {name}: widths {widths}, blocks {depths}")
print("largest:", space.largest())
print("smallest:", space.smallest())

# %% [markdown]
# ## What a subnet is: masks on the same weights
#
# Running a subnet multiplies every weight by a 0/1 mask before the plain model runs: a subnet keeps the first
# `w` channels of each level, and a dropped block has its last conv masked to zero, so it returns its input. All
# subnets run in one compiled program, so training on a new subnet every step compiles once. Below: the masks of
# three layers of one subnet (white: kept).

# %%
picks = (0, 1, 2, 0)   # each level's choice: the narrowest, the middle, the widest, the narrowest
sub = nas.Subnet(widths=tuple(c[k] for c, k in zip(space.width_choices, picks)), depths=(2, 1, 2, 1))
masks = supernet.masks(sub)   # parameter path -> 0/1 mask at the parameter's shape
shown = [("down", 1, "kernel"), ("decoder", 1, 0, "conv1", "kernel"), ("encoder", 3, 1, "conv2", "kernel")]
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
for ax, path in zip(axes, shown):
  m = masks[path][0, 0, 0]   # [in, out] of the first kernel offset
  ax.imshow(m, cmap="gray", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
  ax.set(title="/".join(map(str, path[:-1])), xlabel="output channel", ylabel="input channel")
axes[1].annotate("skip half | upsampled half", (0.5, 0.02), xycoords="axes fraction", ha="center", color="tab:red")
axes[2].text(0.5, 0.5, "block dropped:\nall zero", transform=axes[2].transAxes, ha="center", color="tab:red")
fig.suptitle(f"masks of {sub}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Training it: a new subnet every step
#
# In training mode the supernet draws a subnet per call from its seed and a counter in its state (so a resumed
# run, or every device of a `pmap`, draws the same). The library's `make_train_step` does the rest.

# %%
train_set = data.SyntheticLArTPC(100_000, seed=0, size=SIZE)
val_set = data.SyntheticLArTPC(VAL_EVENTS, seed=1, size=SIZE)
schedule = optax.warmup_cosine_decay_schedule(0.0, 4e-3, max(1, STEPS // 20), STEPS, 2e-4)
optimizer = nnx.Optimizer(supernet, optax.adam(schedule), wrt=nnx.Param)
graphdef, state = nnx.split((supernet, optimizer))
step = training.make_train_step(graphdef, num_classes=5, num_events=BATCH)
loader = data.Loader(train_set, BATCH, seed=0, num_steps=STEPS, level_strides=(2, 4, 8))
t0, seen = time.perf_counter(), training.ConfusionMatrix(5)
for i, (x, y) in enumerate(loader):
  state, loss, cm = step(state, x, y)
  seen.add(cm)
  if (i + 1) % max(1, STEPS // 6) == 0:
    print(f"step {i + 1:4d}  loss {float(loss):.3f}  accuracy of the drawn subnets (recent) "
          f"{seen.nonzero_accuracy():.1%}  {time.perf_counter() - t0:4.0f} s")
    seen = training.ConfusionMatrix(5)
nnx.update((supernet, optimizer), state)

# %% [markdown]
# ## Scoring a subnet
#
# The running batch-norm averages belong to no subnet in particular, so each subnet first takes its own
# statistics from a few training batches (recalibration), then is scored on held-out events.

# %%
calibration = [x for x, _ in data.Loader(train_set, BATCH, seed=1, num_steps=2, level_strides=(2, 4, 8))]
validation = list(data.Loader(val_set, BATCH, shuffle=False, num_steps=len(val_set) // BATCH,
                              level_strides=(2, 4, 8)))
evaluator = nas.SubnetEvaluator(supernet, calibration=calibration, validation=validation, num_classes=5)
for s in (space.largest(), sub, space.smallest()):
  print(f"{s}: non-zero accuracy {evaluator(s):.2%}")

# %% [markdown]
# ## Costs: MACs over real pairs, and latency on this machine
#
# A sparse conv's MACs are its kernel map's pairs times its input and output channels. `supernet.geometry` counts
# the pairs and rows of a batch once; `supernet.macs` then prices any subnet, and agrees exactly with
# `nn.count_macs` run on the subnet's export.
#
# Latency: `nas.LatencyTable` times every layer choice once, and predicts a subnet from the layers it keeps, with a
# scale and a constant fitted to two measured exports. Other exports, measured, show its error. At these sizes a
# forward takes a few milliseconds and the timing noise of a busy laptop is of the same order; on the full runs'
# 60-400 ms forwards the held-out error was 3-14% ([docs/nas.md](../docs/nas.md)).

# %%
geometry = {}
for x, _ in validation:
  for key, value in supernet.geometry(x).items():
    geometry[key] = geometry.get(key, 0) + value
macs = lambda s: supernet.macs(s, geometry) / len(val_set)
x0 = validation[0][0]
print(f"MACs per event: largest {macs(space.largest()) / 1e6:.1f} M, smallest {macs(space.smallest()) / 1e6:.1f} M")
print("count_macs of the export agrees:",
      supernet.macs(sub, supernet.geometry(x0)) == js.nn.count_macs(supernet.export(sub), x0)["total"])

table = nas.LatencyTable(supernet, (x0,), repeats=3)
rng = np.random.default_rng(0)
probe = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(2 if CI else 6)]
measured = {s: nas.measure_latency(supernet.export(s), (x0,)) for s in probe}
table.calibrate({s: measured[s] for s in probe[:2]})

fig, ax = plt.subplots(figsize=(5, 4.5))
for s in probe:
  ax.scatter(1e3 * measured[s], 1e3 * table.predict(s), color="tab:orange" if s in probe[:2] else "tab:blue")
lim = [0, 1.1e3 * max(measured.values())]
ax.plot(lim, lim, color="gray", lw=1)
ax.set(xlim=lim, ylim=lim, xlabel="measured forward (ms)", ylabel="predicted (ms)",
       title=f"latency table ({len(table.entries)} layer timings)\norange: fitted, blue: held out")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Searching: evolution against random search
#
# The budget is a quarter of the largest subnet's MACs. Evolution starts from random subnets within the budget,
# then breeds mutations and crossovers of the best so far; random search draws the same number of subnets.
# Scores are cached, so the two searches share their evaluations.

# %%
budget = 0.25 * macs(space.largest())
runs = {}
for seed in SEEDS:
  runs[("evolution", seed)] = nas.evolutionary_search(space, evaluator, macs, budget, evaluations=EVALUATIONS,
                                                      population=max(3, EVALUATIONS // 4), parents=3, seed=seed)
  runs[("random", seed)] = nas.random_search(space, evaluator, macs, budget, evaluations=EVALUATIONS, seed=seed)
for (method, seed), history in runs.items():
  print(f"{method:9s} seed {seed}: best {nas.best(history).score:.2%}  {nas.best(history).subnet}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
colours = {"evolution": "tab:blue", "random": "tab:gray"}
for (method, seed), history in runs.items():
  best_so_far = np.maximum.accumulate([100 * e.score for e in history])
  axes[0].plot(np.arange(1, len(history) + 1), best_so_far, color=colours[method], alpha=0.8,
               label=method if seed == SEEDS[0] else None)
  axes[1].scatter([macs(e.subnet) / 1e6 for e in history], [100 * e.score for e in history], s=14,
                  color=colours[method], alpha=0.6, label=method if seed == SEEDS[0] else None)
axes[0].set(xlabel="subnets scored", ylabel="best non-zero accuracy so far (%)", title="search progress (per seed)")
largest = space.largest()
axes[1].scatter([macs(largest) / 1e6], [100 * evaluator(largest)], marker="s", color="tab:red", label="largest")
axes[1].axvline(budget / 1e6, color="tab:orange", ls="--", label="budget")
axes[1].set(xlabel="MMACs per event", ylabel="validation non-zero accuracy (%)",
            title="every subnet scored against its MACs")
for ax in axes:
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The winner as a plain model
#
# The best subnet becomes a standalone `UResNet` with its sliced weights and recalibrated statistics: it gives the
# supernet's outputs, runs at its own speed, and can be saved, loaded and fine-tuned like any model.

# %%
winner = max((nas.best(h) for (m, _), h in runs.items() if m == "evolution"), key=lambda e: e.score).subnet
recalibrated = evaluator.recalibrated(winner)
model = recalibrated.export(winner)
print(type(model).__name__, supernet.plain_config(winner))
gap = jnp.max(jnp.abs(model(x0).feats - recalibrated(x0, subnet=winner).feats))
print(f"export against supernet: max |difference| {float(gap):.1e}")
big = recalibrated.export(largest)
rounds = [(nas.measure_latency(big, (x0,)), nas.measure_latency(model, (x0,))) for _ in range(3)]  # interleaved
t_big, t_small = np.median(rounds, axis=0)
print(f"forward on one batch: largest {1e3 * t_big:.1f} ms, winner {1e3 * t_small:.1f} ms "
      f"({t_big / t_small:.1f}x faster) at {macs(winner) / macs(largest):.2f} of its MACs; accuracy "
      f"{evaluator(winner):.2%} against {evaluator(largest):.2%}")
