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
# # Kernels: a Pallas GPU kernel, checked on a CPU, compiled for GPUs without one
#
# jsparse3d's convolutions have three implementations behind one function:
#
# - `"native"`: C++ CPU kernels called through XLA's foreign-function interface (the default on CPU);
# - `"xla"`: pure `jax.numpy`, any backend (and float64);
# - `"pallas"`: fused gather-GEMM kernels written in Pallas for NVIDIA GPUs (the default on a GPU).
#
# Every Pallas kernel sits beside a pure-jnp reference (`pallas_kernels/<kernel>/reference.py`). On a CPU, Pallas
# runs a kernel in *interpret mode*: the same program, block by block, with jnp operations. This is how the tests
# check the GPU kernels on machines with no GPU. This notebook runs the convolution kernel that way against its
# reference and the CPU path, then compiles it for A100 (sm_80) and H100 (sm_90) GPUs on this CPU-only machine
# and reads off what the GPU would run: registers, spills, shared memory and occupancy.

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jsparse3d as js
from pallas_kernels.conv import api as conv_api
from pallas_kernels.conv import reference

CI = os.environ.get("JSPARSE3D_NOTEBOOK_CI") == "1"
SIZE = 64 if CI else 128           # the event's grid
CHANNELS = 16 if CI else 32

# %% [markdown]
# ## The kernel's input: a neighbour table
#
# The GPU kernel is *output-stationary*: one program computes a block of output rows, gathering for each row and
# kernel offset `k` the input row `nbr[row, k]` (or nothing, where `nbr` is -1) and multiplying it by the weight
# `w[k]`. The table comes from the kernel map.

# %%
event = js.data.synthetic_lartpc_event(0, size=SIZE)
n = len(event["coords"])
capacity = int(2 ** np.ceil(np.log2(n)))
key = jax.random.key(0)
feats = jax.random.normal(key, (n, CHANNELS))
x = js.SparseTensor.from_coords(event["coords"], feats, capacity=capacity)
kmap, x = js.ops.kernel_map(x, 3)
nbr = kmap.neighbor_table()                                     # int32 [capacity, 27]
found = np.asarray(nbr[:n] >= 0)
print(f"{n} voxels; neighbour table {nbr.shape}; {found.sum() / n:.2f} of 27 offsets hold a neighbour on average")

fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(range(27), found.mean(axis=0))
ax.set(xlabel="kernel offset k (0..26; 13 is the centre)", ylabel="rows with a neighbour",
       title="How full the table is: a LArTPC track has few neighbours per voxel")
ax.grid(alpha=0.3, axis="y")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Interpret mode against the reference and the CPU kernels
#
# `conv_api.conv_forward(x, w, nbr)` runs the Pallas kernel (interpret mode here, since the backend is the CPU);
# `reference.conv_forward` is the same sum written as a gather and an `einsum`; `js.ops.conv3d` with
# `implementation="native"` is the CPU path that training uses here. The three must agree to float32 rounding,
# and the weight gradient too.

# %%
w = jax.random.normal(jax.random.key(1), (3, 3, 3, CHANNELS, CHANNELS)) * 0.1
w_k = w.reshape(27, CHANNELS, CHANNELS)
t0 = time.perf_counter()
pallas = jax.block_until_ready(conv_api.conv_forward(x.feats, w_k, nbr))
t_pallas = time.perf_counter() - t0
ref = reference.conv_forward(x.feats, w_k, nbr)
native = js.ops.conv3d(x, w, implementation="native").feats
public = js.ops.conv3d(x, w, implementation="pallas").feats     # the same kernel through the public op
err = lambda a, b: float(jnp.max(jnp.abs(a[:n] - b[:n])))
print(f"forward, max |difference| over {n} rows x {CHANNELS} channels:")
print(f"  Pallas (interpret) vs reference {err(pallas, ref):.1e}; vs native {err(pallas, native):.1e}; "
      f"conv3d(implementation='pallas') vs native {err(public, native):.1e}")

dy = jax.random.normal(jax.random.key(2), (capacity, CHANNELS)) * (jnp.arange(capacity) < n)[:, None]
dw_pallas = conv_api.conv_wgrad(x.feats, dy, nbr)
dw_ref = reference.conv_wgrad(x.feats, dy, nbr)
dw_native = jax.grad(lambda w: jnp.vdot(js.ops.conv3d(x, w, implementation="native").feats, dy))(w)
print(f"weight gradient: Pallas vs reference {float(jnp.max(jnp.abs(dw_pallas - dw_ref))):.1e}; vs native autodiff "
      f"{float(jnp.max(jnp.abs(dw_pallas - dw_native.reshape(27, CHANNELS, CHANNELS)))):.1e} "
      f"(values up to {float(jnp.max(jnp.abs(dw_ref))):.0f})")
print(f"interpret mode took {t_pallas:.2f} s: it checks the program, it is not meant to be fast")

# %% [markdown]
# ## Compiling for GPUs on a machine without one
#
# `jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))` lowers a function for CUDA on any host. Each Pallas
# kernel becomes a Triton module inside the lowered program. `pallas_kernels._aot.compile_function` compiles those
# modules with the `triton` package (a Linux dev dependency) to cubins for sm_80 and sm_90 and reads their
# resources with `cuobjdump`. Registers per thread bound how many warps fit on a streaming multiprocessor (65,536
# registers each); spills would mean local-memory traffic. `python -m pallas_kernels.report` prints this for
# every kernel and channel tier the models use; here are the convolution's forward and weight-gradient kernels at
# a few widths. Occupancy is the resident warps per multiprocessor over the 64 possible, as registers, shared
# memory and the block size allow.

# %%
try:
  import triton  # noqa: F401

  from pallas_kernels import _aot
  from pallas_kernels import report
  have_triton = True
except ImportError:
  have_triton = False
  print("triton is not installed (pip install -e '.[dev]' on Linux brings it): no GPU compile here.")

rows = []
if have_triton:
  shapes = [(16, 16), (32, 32)] if CI else [(16, 16), (32, 32), (64, 64), (128, 128)]
  for c_in, c_out in shapes:
    xs = jax.ShapeDtypeStruct((4096, c_in), jnp.float32)
    ws = jax.ShapeDtypeStruct((27, c_in, c_out), jnp.float32)
    dys = jax.ShapeDtypeStruct((4096, c_out), jnp.float32)
    nbrs = jax.ShapeDtypeStruct((4096, 27), jnp.int32)
    for what, fn, args in (("forward", conv_api.conv_forward, (xs, ws, nbrs)),
                           ("weight gradient", conv_api.conv_wgrad, (xs, dys, nbrs))):
      for b in _aot.compile_function(lambda *a, fn=fn: fn(*a, interpret=False), *args):
        rows.append((what, c_in, b.arch, b.registers, b.spill_stores + b.spill_loads, b.shared + b.shared_dynamic,
                     b.num_warps, report.occupancy(b, b.num_warps)))
  print("| kernel | channels | sm | registers | spill bytes | shared memory (B) | warps/block | occupancy |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:,} | {r[6]} | {r[7]:.0%} |")

# %%
if rows:
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for what, style in (("forward", "o-"), ("weight gradient", "s--")):
    for arch, colour in ((80, "tab:blue"), (90, "tab:orange")):
      sel = [r for r in rows if r[0] == what and r[2] == arch]
      ax.plot([r[1] for r in sel], [r[3] for r in sel], style, color=colour, label=f"{what}, sm_{arch}")
  ax.axhline(255, color="gray", ls=":", label="255: the most a thread can hold")
  ax.set(xscale="log", xlabel="channels (in = out)", ylabel="registers per thread",
         title="Register pressure of the convolution kernels by channel width")
  widths = sorted({r[1] for r in rows})
  ax.set_xticks(widths)
  ax.set_xticklabels(widths)
  ax.minorticks_off()
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  plt.tight_layout()
  plt.show()

# %% [markdown]
# On a GPU, `python -m pallas_kernels.gpu_check --out results.json` runs every kernel compiled for real against
# its reference and the XLA path, times them, times a U-ResNet and a MinkUNet training step, and tunes the block
# sizes (docs/gpu.md). The interpret-mode check above is what keeps these kernels honest between GPU runs.
