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
# # Sparse vs dense: the same U-ResNet both ways
#
# Why sparse convolutions at all? A dense 3D CNN pays for every voxel of the image, and a LArTPC image of 768^3
# voxels has 450 million of them, nearly all empty. A submanifold sparse CNN pays for the non-empty voxels only,
# a few thousand per event. This notebook builds the U-ResNet of the papers twice: `models.UResNet` (sparse) and
# `models.DenseUResNet` (the same topology and parameters on dense grids, through XLA's convolutions). It checks
# that they compute the same thing where every voxel is active, then measures time and memory as the image grows.
#
# The full study, with images up to 768^3 and the papers' numbers next to ours, is
# [docs/uresnet_study.md](../docs/uresnet_study.md). This is its small version: `SIDES` sets the image sizes that
# are timed (about 4 minutes on a 2-core CPU at the defaults; the dense network takes seconds per call).

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
from flax import nnx

import jsparse3d as js
from jsparse3d import data

CI = os.environ.get("JSPARSE3D_NOTEBOOK_CI") == "1"
FILTERS, DEPTH = (4, 3) if CI else (16, 5)
SIDES = [32] if CI else [32, 48, 64]                     # images timed with both networks
SIDES_MEMORY_ONLY = [] if CI else [128, 256, 512, 768]   # dense: XLA's memory analysis only, never run
REPS = 1 if CI else 2

sparse = js.models.UResNet(1, 5, filters=FILTERS, depth=DEPTH, rngs=nnx.Rngs(0))
dense = js.models.DenseUResNet(1, 5, filters=FILTERS, depth=DEPTH, rngs=nnx.Rngs(0))
count = lambda m: sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
print(f"parameters: sparse {count(sparse):,}, dense {count(dense):,}")

# %% [markdown]
# ## Twins
#
# The two draw the same initial weights in the same order. Where every voxel of an image is active, a submanifold
# convolution *is* a dense 'SAME' convolution, and the masked batch norm *is* batch norm. So on a fully occupied
# grid the two networks give the same logits, up to float32 rounding:

# %%
side = 2 ** (DEPTH - 1) * 2
grid = jax.random.uniform(jax.random.key(1), (1, side, side, side, 1), minval=0.1)
full = js.ops.from_dense(grid)                                # every voxel active
sparse_logits = sparse(full).feats
dense_logits = dense(grid).reshape(-1, 5)                     # from_dense keeps (b, x, y, z) order
print(f"{side}^3 grid, all {side ** 3} voxels active: max |sparse - dense| logits = "
      f"{float(jnp.max(jnp.abs(sparse_logits - dense_logits))):.1e} "
      f"(logits up to {float(jnp.max(jnp.abs(dense_logits))):.1f})")

# %% [markdown]
# ## Time and memory against the image size
#
# One event per batch, generated at each size (the generator scales its particles to the volume). Each network is
# timed on its forward pass and on the gradient of the loss on the non-empty voxels (what a training step costs,
# less the optimizer update): the best of `REPS` calls after a compiling call, the two networks interleaved.
# Memory is XLA's analysis of the compiled gradient: arguments, outputs and temporaries. Beyond `SIDES` the dense
# network is only compiled, never run (at 128^3 one call takes a minute or two here): XLA's memory analysis says
# what it would need. The sparse network runs at every size.

# %%
def loss_of(forward):
  def loss(state, graphdef, x, labels):
    model = nnx.merge(graphdef, state)
    logits = forward(model, x)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(labels, 0)[:, None], axis=1)[:, 0]
    counted = labels >= 0                                      # padding (sparse) and empty voxels (dense): -1
    return jnp.sum(jnp.where(counted, nll, 0.0)) / jnp.maximum(jnp.sum(counted), 1)
  return loss


forward_of = {"sparse": lambda m, x: m(x).feats, "dense": lambda m, g: m(g).reshape(-1, 5)}
compiled = {}
for kind, model in (("sparse", sparse), ("dense", dense)):
  graphdef, state = nnx.split(model)
  f = jax.jit(lambda state, x, graphdef=graphdef, kind=kind: forward_of[kind](nnx.merge(graphdef, state), x))
  g = jax.jit(jax.grad(loss_of(forward_of[kind])), static_argnums=1)
  compiled[kind] = (state, graphdef, f, g)


def inputs(side):
  ev = data.synthetic_lartpc_event(100, size=side)
  x, y = data.collate([ev], level_strides=tuple(2 ** i for i in range(1, DEPTH)))
  grid = js.ops.to_dense(x, (side,) * 3, batch_size=1)
  labels = js.ops.to_dense(x.replace(feats=(jnp.asarray(y, jnp.float32) + 1)[:, None]), (side,) * 3,
                           batch_size=1).reshape(-1).astype(jnp.int32) - 1
  return {"sparse": (x, jnp.asarray(y)), "dense": (grid, labels)}, int(x.num_valid)


def best_ms(fn, *args):
  jax.block_until_ready(fn(*args))  # compiles
  times = []
  for _ in range(REPS):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * min(times)


def xla_mb(fn, *args):
  m = fn.lower(*args).compile().memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes) / 2 ** 20


rows = []
for side in SIDES + SIDES_MEMORY_ONLY:
  args, voxels = inputs(side)
  row = dict(side=side, voxels=voxels)
  for kind, (state, graphdef, f, g) in compiled.items():
    if kind == "dense" and side not in SIDES:
      spec = (jax.ShapeDtypeStruct((1, side, side, side, 1), jnp.float32),
              jax.ShapeDtypeStruct((side ** 3,), jnp.int32))
      row["dense_mb"] = xla_mb(g, state, graphdef, *spec)
      continue
    row[f"{kind}_forward_ms"] = best_ms(f, state, args[kind][0])
    row[f"{kind}_gradient_ms"] = best_ms(g, state, graphdef, *args[kind])
    row[f"{kind}_mb"] = xla_mb(g, state, graphdef, *args[kind])
  rows.append(row)
  dense_time = f"{row['dense_gradient_ms']:8.0f} ms" if "dense_gradient_ms" in row else "     not run"
  print(f"{side:4d}^3, {voxels:6,} voxels: gradient sparse {row['sparse_gradient_ms']:6.1f} ms, dense {dense_time}; "
        f"memory sparse {row['sparse_mb']:4.0f} MB, dense {row['dense_mb']:9,.0f} MB")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8))
sides = [r["side"] for r in rows]
timed_rows = [r for r in rows if "dense_gradient_ms" in r]
ax = axes[0]
for kind, colour, subset in (("sparse", "tab:blue", rows), ("dense", "tab:red", timed_rows)):
  ax.plot([r["side"] for r in subset], [r[f"{kind}_gradient_ms"] for r in subset], "o-", color=colour,
          label=f"{kind}: forward + backward")
  ax.plot([r["side"] for r in subset], [r[f"{kind}_forward_ms"] for r in subset], "s--", color=colour, alpha=0.6,
          label=f"{kind}: forward")
for i, r in enumerate(rows):  # above and below the line by turns, so that neighbouring labels do not collide
  ax.annotate(f"{r['voxels']:,} voxels", (r["side"], r["sparse_gradient_ms"]), textcoords="offset points",
              xytext=(0, 8 if i % 2 == 0 else -13), ha="center", fontsize=7, color="tab:blue")
ax.set(xscale="log", yscale="log", xlabel="image side (voxels; one event)", ylabel="time per event (ms)",
       title="Time: dense follows the volume, sparse the voxels")
ax = axes[1]
ax.plot(sides, [r["sparse_mb"] for r in rows], "o-", color="tab:blue", label="sparse")
ax.plot(sides, [r["dense_mb"] for r in rows], "o-", color="tab:red",
        label="dense" + (f" (compiled only beyond {SIDES[-1]}^3)" if SIDES_MEMORY_ONLY else ""))
ax.axhline(24 * 1024, color="gray", ls=":", label="24 GB: this machine's memory")
too_big = [r["side"] for r in rows if r["dense_mb"] > 24 * 1024]
ax.set(xscale="log", yscale="log", xlabel="image side (voxels; one event)", ylabel="XLA memory of the gradient (MB)",
       title="Memory" + (f": the dense network does not fit here at {too_big[0]}^3" if too_big else ""))
for ax in axes:
  ax.set_xticks(sides)
  ax.set_xticklabels(sides)
  ax.minorticks_off()
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper right" if ax is axes[0] else "upper left")  # where the lines are not
plt.tight_layout()
plt.show()

# %% [markdown]
# The sparse network's cost follows the number of non-empty voxels, not the volume; the dense network's follows
# the volume (8x per doubling of the side). Even at 32^3 the event fills well under 1% of the image, so on this CPU
# the sparse network is faster at every size by one to two orders of magnitude, and past a few hundred voxels per
# side the dense one cannot run at all. The full study, [docs/uresnet_study.md](../docs/uresnet_study.md), goes
# further: both networks trained to accuracy on the same events, and the papers' 2D batch study.
