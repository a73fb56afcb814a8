"""Quickstart: a sparse tensor from a synthetic point cloud, a small sparse U-Net stack, and its gradient.

Builds a LArTPC-like event (straight tracks of 3 mm voxels in a 192^3 volume), voxelizes it into a SparseTensor,
then runs submanifold conv -> strided conv -> submanifold conv -> transposed conv -> skip concatenation -> 1x1
conv under jax.jit, takes the gradient of a loss with respect to every weight, and prints what it did.

    python examples/quickstart.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jsparse3d as js


def synthetic_event(seed: int, size: int = 192, tracks: int = 12) -> tuple[np.ndarray, np.ndarray]:
  """Voxel coordinates and deposited energy (MeV) of straight tracks through a cube of ``size`` voxels."""
  rng = np.random.default_rng(seed)
  pts, energy = [], []
  for _ in range(tracks):
    start = rng.uniform(0, size, 3)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    length = rng.uniform(20, size)
    t = np.arange(0, length, 0.5)[:, None]
    p = start + t * direction
    p = p[np.all((p >= 0) & (p < size), axis=1)]
    pts.append(p)
    energy.append(rng.gamma(9.0, 0.07, len(p)))  # ~0.6 MeV per half-voxel step, Landau-like spread
  xyz = np.floor(np.concatenate(pts)).astype(np.int32)
  return xyz, np.concatenate(energy).astype(np.float32)[:, None]


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
  coords, energy = synthetic_event(seed=0)
  x = js.SparseTensor.from_coords(coords, energy, capacity=8192, duplicates="sum")
  n = int(x.num_valid)
  print(f"event: {len(coords)} deposits -> {n} voxels (capacity {x.capacity}), "
        f"occupancy {n / 192 ** 3:.4%} of 192^3, {float(x.feats.sum()):.1f} MeV")

  params = init(jax.random.key(0), {"stem": (3, 3, 3, 1, 16), "down": (2, 2, 2, 16, 32), "mid": (3, 3, 3, 32, 32),
                                    "up": (2, 2, 2, 32, 16), "head": (1, 1, 1, 32, 5)})
  labels = jnp.asarray(np.random.default_rng(1).integers(0, 5, x.capacity), jnp.int32)

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
