"""Model cost on CPU: forward and forward+backward time, XLA's peak-memory estimate and MACs over real data.

  uresnet_192 / uresnet_512   UResNet (defaults, 2.74 M parameters) on one synthetic LArTPC event
  dense_uresnet_192           its dense twin on the same event as a 192^3 grid (the study's comparison; minutes
                              per step on 2 cores, so it runs only when named in --only)
  minkunet_cr0.5              MinkUNet cr 0.5 on the real SemanticKITTI scan at 0.05 m (~94k voxels)
  spvcnn_cr0.5                SPVCNN cr 0.5 on the same scan's 123k points
  pvcnn_shapenet              PVCNN (shapenet_part) on 2048 points

Times are medians after compilation (jitted, float32, training-mode forward); "ratio" is forward+backward over
forward, measured in the same run. Peak memory is XLA's static estimate for the compiled forward+backward
(arguments + outputs + temporaries). Run: ``python benchmarks/models_cpu.py [--only uresnet_192,...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jsparse3d as js
from _timing import times_ms
from jsparse3d import data
from jsparse3d import models

ROOT = Path(__file__).resolve().parents[1]
# SemanticKITTI scan 000000 where JSPARSE3D_KITTI_SAMPLE names its folder, else a synthetic 64-beam scan.
KITTI = Path(os.environ.get("JSPARSE3D_KITTI_SAMPLE", "/nonexistent")) / "000000.bin"


def measure(model, loss_fn, args, *, reps, macs_args):
  graph, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest, *a):
    return loss_fn(nnx.merge(graph, params, rest), *a)

  fwd = nnx.jit(loss_fn)
  fwd_bwd = nnx.jit(nnx.grad(loss_fn))  # with respect to the parameters
  try:  # XLA's memory estimate needs the functional form
    compiled = jax.jit(jax.grad(loss)).lower(params, rest, *args).compile()
    mem = compiled.memory_analysis()
  except Exception as e:  # noqa: BLE001 - report the number as missing, not the benchmark as failed
    print(f"  (no memory estimate: {type(e).__name__})")
    mem = None
  peak = None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
  median_ms = lambda f: statistics.median(times_ms(f, model, *args, warmup=1, reps=reps))
  out = dict(fwd_ms=median_ms(fwd), fwd_bwd_ms=median_ms(fwd_bwd))
  out["ratio_fwd_bwd_over_fwd"] = out["fwd_ms"] and out["fwd_bwd_ms"] / out["fwd_ms"]
  out["peak_memory_mb"] = None if peak is None else peak / 2 ** 20
  model.eval()
  out["macs"] = js.nn.count_macs(model, *macs_args)["total"]
  model.train()
  out["params"] = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return out


def voxel_loss(model, x, y):
  logits = model(x).feats
  valid = y >= 0
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(y, 0)[:, None], axis=1)[:, 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(valid.sum(), 1).astype(jnp.float32)


def kitti_points():
  if KITTI.exists():
    scan = np.fromfile(KITTI, np.float32).reshape(-1, 4)
  else:
    scan = data.synthetic_lidar_scan(0)["points"].astype(np.float32)
  xyz = scan[:, :3] / 0.05
  xyz = xyz - np.floor(xyz.min(axis=0))
  labels = np.zeros(len(scan), np.int32)
  return jnp.asarray(xyz), jnp.zeros(len(scan), jnp.int32), jnp.asarray(scan), jnp.asarray(labels)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--only", default="")
  ap.add_argument("--out", default=str(ROOT / "results" / "models_cpu.json"))
  args = ap.parse_args()
  only = set(filter(None, args.only.split(",")))
  results = {}

  def run(name, make):
    if only and name not in only:
      return
    print(f"{name} ...", flush=True)
    results[name] = make()
    print(f"  {results[name]}", flush=True)

  for size in (192, 512):
    def uresnet(size=size):
      x, y = data.collate([data.synthetic_lartpc_event(0, size=size)])
      r = measure(models.UResNet(rngs=nnx.Rngs(0)), voxel_loss, (x, jnp.asarray(y)), reps=args.reps, macs_args=(x,))
      return r | {"voxels": int(x.num_valid)}
    run(f"uresnet_{size}", uresnet)

  def dense_uresnet():
    x, y = data.collate([data.synthetic_lartpc_event(0, size=192)])
    grid = js.ops.to_dense(x, spatial_shape=(192,) * 3, batch_size=1)
    labels = js.ops.to_dense(x.replace(feats=jnp.asarray(y + 1, jnp.float32)[:, None]), spatial_shape=(192,) * 3,
                             batch_size=1)[..., 0].astype(jnp.int32) - 1

    def loss(m, g, lab):
      mask = models.nonempty_mask(g)
      logits = m(g)
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(lab, 0)[..., None], axis=-1)[..., 0]
      return jnp.sum(jnp.where(mask, nll, 0.0)) / mask.sum().astype(jnp.float32)

    return measure(models.DenseUResNet(rngs=nnx.Rngs(0)), loss, (grid, labels), reps=1, macs_args=(grid,))
  if "dense_uresnet_192" in only:
    run("dense_uresnet_192", dense_uresnet)

  print("LiDAR input:", KITTI if KITTI.exists() else "synthetic scan (set JSPARSE3D_KITTI_SAMPLE for the real one)")

  def minkunet():
    xyz, batch, feats, _ = kitti_points()
    x, row = js.ops.voxelize(xyz, batch, feats)
    y = jnp.zeros((x.capacity,), jnp.int32)
    r = measure(models.MinkUNet(cr=0.5, rngs=nnx.Rngs(0)), voxel_loss, (x, y), reps=args.reps, macs_args=(x,))
    return r | {"voxels": int(x.num_valid)}
  run("minkunet_cr0.5", minkunet)

  def spvcnn():
    xyz, batch, feats, labels = kitti_points()

    def loss(m, xyz, batch, feats, labels):
      logits = m(xyz, batch, feats)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    r = measure(models.SPVCNN(cr=0.5, rngs=nnx.Rngs(0)), loss, (xyz, batch, feats, labels), reps=args.reps,
                macs_args=(xyz, batch, feats))
    return r | {"points": int(xyz.shape[0])}
  run("spvcnn_cr0.5", spvcnn)

  def pvcnn():
    rng = np.random.default_rng(0)
    pts = jnp.asarray(rng.uniform(-1, 1, (1, 2048, 6)).astype(np.float32))
    one_hot = jax.nn.one_hot(jnp.array([4]), 16)
    labels = jnp.zeros((1, 2048), jnp.int32)

    def loss(m, p, o, lab):
      logits = m(p, o)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), lab[..., None], axis=-1))

    return measure(models.PVCNN("shapenet_part", rngs=nnx.Rngs(0)), loss, (pts, one_hot, labels), reps=args.reps,
                   macs_args=(pts, one_hot))
  run("pvcnn_shapenet", pvcnn)

  print(f"\n{'model':<20}{'fwd ms':>10}{'fwd+bwd ms':>12}{'ratio':>7}{'peak MB':>10}{'GMACs':>9}{'params':>12}")
  for name, r in results.items():
    peak = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "-"
    print(f"{name:<20}{r['fwd_ms']:>10.1f}{r['fwd_bwd_ms']:>12.1f}{r['ratio_fwd_bwd_over_fwd']:>7.2f}{peak:>10}"
          f"{r['macs'] / 1e9:>9.2f}{r['params']:>12,}")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"jax": jax.__version__, "results": results}, indent=2) + "\n")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  sys.exit(main())
