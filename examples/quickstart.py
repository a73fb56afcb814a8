"""Quickstart: synthetic LArTPC events as a SparseTensor batch, a small sparse U-Net stack, and its gradient.

Generates two events with ``jsparse3d.data`` (tracks, showers, delta rays and Michel electrons in a 192^3 volume
of 3 mm voxels, labelled in the uresnet5 scheme), collates them into one padded SparseTensor, then runs
submanifold conv -> strided conv -> submanifold conv -> transposed conv -> skip concatenation -> 1x1 conv under
jax.jit, takes the gradient of the cross-entropy with respect to every weight, and prints what it did.

    python examples/quickstart.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jsparse3d as js
from jsparse3d import data


def init(key, shapes):
  keys = jax.random.split(key, len(shapes))
  return {name: jax.random.normal(k, s, jnp.float32) * np.sqrt(2.0 / np.prod(s[:-1]))
          for k, (name, s) in zip(keys, shapes.items())}


def net(params, x: js.SparseTensor) -> js.SparseTensor:
  h = js.ops.relu(js.ops.conv3d(x, params["stem"]))                    # submanifold 3^3, 1 -> 16
  d = js.ops.relu(js.ops.conv3d(h, params["down"], stride=2))          # strided k2 s2, 16 -> 32
  d = js.ops.relu(js.ops.conv3d(d, params["mid"]))                     # submanifold 3^3 at stride 2
  u = js.ops.relu(js.ops.conv_transpose3d(d, params["up"]))            # back to h's coordinates, row for row
  return js.ops.conv3d(js.ops.cat([h, u]), params["head"])             # 1x1 conv on the skip concatenation


def main():
  events = [data.synthetic_lartpc_event(seed) for seed in range(2)]
  x, labels = data.collate(events)  # energy as the one feature; labels -1 on padded rows
  n = int(x.num_valid)
  counts = np.bincount(labels[:n], minlength=5)
  print(f"batch: {len(events)} events, {n} voxels (capacity {x.capacity}), occupancy "
        f"{n / len(events) / 192 ** 3:.4%} of 192^3, {float(x.feats.sum()):.1f} MeV")
  print("voxels per class: " + ", ".join(f"{name} {c}" for name, c in zip(data.class_names("uresnet5"), counts)))

  params = init(jax.random.key(0), {"stem": (3, 3, 3, 1, 16), "down": (2, 2, 2, 16, 32), "mid": (3, 3, 3, 32, 32),
                                    "up": (2, 2, 2, 32, 16), "head": (1, 1, 1, 32, 5)})
  labels = jnp.asarray(np.maximum(labels, 0))

  def loss_fn(params, x):
    logits = net(params, x).feats
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
    return jnp.sum(jnp.where(x.valid_mask, nll, 0.0)) / x.num_valid

  forward = jax.jit(net)
  step = jax.jit(jax.value_and_grad(loss_fn))
  y = forward(params, x)
  js.raise_if_error(y)
  jax.block_until_ready(step(params, x))
  t0 = time.perf_counter()
  loss, grads = jax.block_until_ready(step(params, x))
  dt = time.perf_counter() - t0

  kmap, _ = js.ops.kernel_map(x, 3)
  _, coarse = js.ops.kernel_map(x, 2, stride=2)
  print(f"submanifold 3^3 map: {int(kmap.num_pairs)} pairs ({int(kmap.num_pairs) / n:.2f} neighbours per voxel)")
  print(f"strided k2 s2: {n} -> {int(coarse.num_valid)} voxels at stride {coarse.stride}")
  print(f"output: {y.feats.shape[1]} logits per voxel on {int(y.num_valid)} voxels, stride {y.stride}; "
        f"padded rows zero: {not bool(jnp.any(y.feats[n:]))}")
  print(f"loss {float(loss):.4f}; gradient norms: " +
        ", ".join(f"{k} {float(jnp.linalg.norm(v)):.3g}" for k, v in grads.items()))
  print(f"jitted forward + backward (map building included): {dt * 1e3:.1f} ms on {jax.default_backend()}")


if __name__ == "__main__":
  main()
