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
# # Quickstart: sparse tensors, kernel maps and sparse convolutions
#
# A LArTPC event or a LiDAR scan fills well under 1% of its voxel grid. jsparse3d stores only the occupied voxels
# (a `SparseTensor`) and convolves over them. This notebook goes from points to a `SparseTensor`, looks at the
# kernel map that says which neighbours each site sees, checks a sparse convolution against a dense one, and then
# uses `jit`, `grad` and `vmap` on sparse tensors, including an error flagged inside `jit`.
#
# Everything runs on a laptop CPU in well under a minute.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jsparse3d as js

print(f"jax {jax.__version__} on {jax.default_backend()}; jsparse3d {js.__version__}")

# %% [markdown]
# ## Points to a `SparseTensor`
#
# A `SparseTensor` holds integer coordinates `[capacity, 4]` (`batch, x, y, z`), features `[capacity, C]` and
# the number of valid rows. The capacity is static, so shapes stay fixed under `jit`; rows past `num_valid` are
# padding (coordinates -1, features 0). Points that fall into the same voxel are merged (`duplicates="mean"` or
# `"sum"`).
#
# Here: a synthetic LArTPC event in a 64^3 volume of 3 mm voxels (tracks, an electromagnetic shower, delta rays and a
# Michel electron), its voxels and their deposited energy.

# %%
event = js.data.synthetic_lartpc_event(seed=7, size=64)
print({k: v.shape for k, v in event.items()})
x = js.SparseTensor.from_coords(event["coords"], event["energy"][:, None], capacity=2048)
print(f"{int(x.num_valid)} valid rows of {x.capacity}; coords {x.coords.shape}, feats {x.feats.shape}; "
      f"occupancy {int(x.num_valid) / 64 ** 3:.2%} of the 64^3 grid")

# %%
fig = plt.figure(figsize=(7, 6))
ax = fig.add_subplot(projection="3d")
c = event["coords"]
s = ax.scatter(c[:, 0], c[:, 1], c[:, 2], c=np.log10(event["energy"]), s=4, cmap="viridis")
fig.colorbar(s, ax=ax, shrink=0.6, pad=0.12, label="log10(deposited energy / MeV)")
ax.set(xlabel="x (voxel)", ylabel="y (voxel)", zlabel="z (voxel)", xlim=(0, 64), ylim=(0, 64), zlim=(0, 64),
       title=f"One synthetic LArTPC event: {len(c)} voxels of 64^3")
plt.show()

# %% [markdown]
# ## The kernel map: which neighbours each site sees
#
# A convolution over sparse sites needs, for each output site and each kernel offset, the input site at that
# offset if it exists. `js.ops.kernel_map` builds these pairs once; the convolutions of the same geometry reuse
# them (they are cached on the tensor). A *submanifold* convolution (stride 1) keeps the input's sites: the
# output exists only where the input does, so sparsity does not dilate layer after layer. A *strided*
# convolution (kernel 2, stride 2) maps each fine site to the coarse site of its 2x2x2 cell.
#
# A small 2D pattern (z = 0, kernels 3x3x1 and 2x2x1) makes this visible.

# %%
pattern = np.array([(1, 1), (2, 1), (3, 2), (4, 3), (4, 4), (5, 5), (6, 5), (7, 5), (2, 5), (2, 6), (3, 6),
                    (6, 1), (7, 2), (7, 1)])
xy = np.concatenate([pattern, np.zeros((len(pattern), 1), int)], axis=1).astype(np.int32)
toy = js.SparseTensor.from_coords(xy, np.ones((len(xy), 1), np.float32), capacity=16)
subm, toy = js.ops.kernel_map(toy, (3, 3, 1))          # submanifold 3x3x1
table = np.asarray(subm.neighbor_table())               # [rows, 9]: the input row at each offset, or -1
down, coarse = js.ops.kernel_map(toy, (2, 2, 1), stride=(2, 2, 1))
coords = np.asarray(toy.coords)[:len(xy), 1:3]
print(f"submanifold 3x3: {int(subm.num_pairs)} pairs for {len(xy)} sites "
      f"({int(subm.num_pairs) / len(xy):.1f} neighbours per site, itself included)")
print(f"strided 2x2: {len(xy)} sites -> {int(coarse.num_valid)} coarse sites at stride {coarse.stride[:2]}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
ax = axes[0]
ax.scatter(*coords.T, s=120, c="lightgray", edgecolors="k", zorder=2)
for site, colour in (((4, 4), "tab:red"), ((7, 1), "tab:blue")):  # two sites and what their 3x3 window finds
  row = int(np.flatnonzero(np.all(coords == site, axis=1))[0])  # rows are sorted by coordinate
  q = coords[row]
  ax.add_patch(plt.Rectangle(q - 1.5, 3, 3, fill=False, ls="--", color=colour))
  for src in table[row]:
    if src >= 0 and src != row:
      ax.annotate("", q, coords[src], arrowprops=dict(arrowstyle="->", color=colour, lw=1.5))
  ax.scatter(*q, s=160, c=colour, edgecolors="k", zorder=3)
ax.set(title="Submanifold 3x3: each site reads the sites in its window", xlabel="x", ylabel="y", aspect="equal")
ax = axes[1]
src_rows, dst_rows = np.asarray(down.src), np.asarray(down.dst)
real = (src_rows >= 0) & (src_rows < len(xy))
cell_of = np.full(len(xy), -1)
cell_of[src_rows[real]] = dst_rows[real]
cells = np.asarray(coarse.coords)[:int(coarse.num_valid), 1:3]
colours = plt.cm.tab10(np.arange(len(cells)) % 10)
for i, c0 in enumerate(cells):
  ax.add_patch(plt.Rectangle(c0 - 0.5, 2, 2, color=colours[i], alpha=0.25))
ax.scatter(*coords.T, s=120, c=colours[cell_of], edgecolors="k", zorder=2)
ax.set(title="Strided 2x2, stride 2: fine sites -> their coarse cell", xlabel="x", ylabel="y", aspect="equal")
for a in axes:
  a.set(xlim=(-0.7, 8.7), ylim=(-0.7, 7.7))
  a.set_xticks(range(9))
  a.set_yticks(range(8))
  a.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A sparse convolution equals the dense one on the active sites
#
# `js.ops.conv3d(x, w)` with `w` of shape `[kx, ky, kz, C_in, C_out]` is a cross-correlation. On the active
# sites its output equals that of a dense `lax.conv_general_dilated` on the same grid (zeros elsewhere, padding
# `(k - 1) // 2` before each axis). That is the oracle of the library's tests; here is the check on the event.

# %%
key = jax.random.key(0)
w = jax.random.normal(key, (3, 3, 3, 1, 8)) * 0.3
y = js.ops.conv3d(x, w)

dense_in = js.ops.to_dense(x, (64, 64, 64), batch_size=1)            # [1, 64, 64, 64, 1]
dense_out = jax.lax.conv_general_dilated(dense_in, w, (1, 1, 1), [(1, 1)] * 3,
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                         precision=jax.lax.Precision.HIGHEST)
n = int(y.num_valid)
c = np.asarray(y.coords[:n])
expected = dense_out[c[:, 0], c[:, 1], c[:, 2], c[:, 3]]
print(f"submanifold conv: max |sparse - dense| on {n} active sites = "
      f"{float(jnp.max(jnp.abs(y.feats[:n] - expected))):.2e}")

w2 = jax.random.normal(key, (2, 2, 2, 1, 8)) * 0.3
z = js.ops.conv3d(x, w2, stride=2)
dense_z = jax.lax.conv_general_dilated(dense_in, w2, (2, 2, 2), [(0, 1)] * 3,
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                       precision=jax.lax.Precision.HIGHEST)
m = int(z.num_valid)
cz = np.asarray(z.coords[:m])
expected = dense_z[cz[:, 0], cz[:, 1] // 2, cz[:, 2] // 2, cz[:, 3] // 2]
print(f"strided conv: {n} -> {m} sites; max |sparse - dense| = {float(jnp.max(jnp.abs(z.feats[:m] - expected))):.2e}")
print(f"dense work: {64 ** 3 * 27:,} window positions; sparse: {int(js.ops.kernel_map(x, 3)[0].num_pairs):,} pairs")

# %% [markdown]
# ## `jit`, `grad` and `vmap`
#
# A `SparseTensor` is a pytree, and every op is a pure function, so the usual transformations apply. The kernel
# maps are built inside the jitted function (on the CPU by native kernels) and cached on the tensor for the next
# convolution of the same shape.

# %%
def net(params, x):
  h = js.ops.relu(js.ops.conv3d(x, params["stem"]))                # submanifold 3^3, 1 -> 16
  d = js.ops.relu(js.ops.conv3d(h, params["down"], stride=2))      # strided k2 s2, 16 -> 32
  u = js.ops.conv_transpose3d(d, params["up"])                     # back to h's sites, row for row
  return js.ops.conv3d(js.ops.cat([h, u]), params["head"])         # 1x1 head on the skip concatenation


k = jax.random.split(key, 4)
params = {"stem": jax.random.normal(k[0], (3, 3, 3, 1, 16)) * 0.3,
          "down": jax.random.normal(k[1], (2, 2, 2, 16, 32)) * 0.1,
          "up": jax.random.normal(k[2], (2, 2, 2, 32, 16)) * 0.1,
          "head": jax.random.normal(k[3], (1, 1, 1, 32, 5)) * 0.1}
labels = jnp.asarray(np.pad(event["labels"], (0, x.capacity - len(event["labels"])), constant_values=0))


def loss_fn(params, x):
  logits = net(params, x).feats
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
  return jnp.sum(jnp.where(x.valid_mask, nll, 0.0)) / x.num_valid


loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, x)
print(f"loss {float(loss):.3f}; gradient shapes {({k: v.shape for k, v in grads.items()})}")

# %% [markdown]
# The gradient is exact. A central finite difference along one random direction agrees with it to float32
# rounding:

# %%
direction = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
norm = jnp.sqrt(sum(jnp.vdot(d, d) for d in jax.tree.leaves(direction)))
direction = jax.tree.map(lambda d: d / norm, direction)  # a unit step in all the weights at once
eps = 3e-2
shifted = lambda s: loss_fn(jax.tree.map(lambda p, d: p + s * eps * d, params, direction), x)
numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
print(f"directional derivative: autodiff {float(analytic):.6f}, finite difference {float(numeric):.6f} "
      f"(relative difference {abs(float(numeric - analytic) / float(analytic)):.1e})")

# %% [markdown]
# `vmap` maps over a leading axis of sparse tensors of the same capacity: here four events, each its own
# `SparseTensor`, stacked.

# %%
events = [js.data.synthetic_lartpc_event(seed=s, size=64) for s in range(4)]
stack = jax.tree.map(lambda *a: jnp.stack(a), *[
    js.SparseTensor.from_coords(e["coords"], e["energy"][:, None], capacity=2048) for e in events])
out = jax.jit(jax.vmap(net, in_axes=(None, 0)))(params, stack)
print(f"vmapped output feats {out.feats.shape}; valid rows per event {np.asarray(out.num_valid).tolist()}")

# %% [markdown]
# ## Errors flagged inside `jit`
#
# Under `jit` nothing data-dependent can raise. Instead, an op that cannot do its job (an output with more sites
# than its static capacity, coordinates out of range, a hash table full) sets a flag that travels with the
# tensors, and `js.raise_if_error` raises it at the boundary with a message that says how to fix it. Nothing is
# dropped silently. Here a strided convolution is given room for 16 coarse sites where the event has more:

# %%
too_small = jax.jit(lambda x: js.ops.conv3d(x, w2, stride=2, capacity=16))(x)
try:
  js.raise_if_error(too_small)
except ValueError as err:
  print("ValueError:", err)

# %% [markdown]
# Next: `02_lartpc_segmentation` trains a U-ResNet on these events.
