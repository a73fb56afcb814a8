"""Sparse convolution on CPU: jsparse3d's XLA path, a GEMM baseline from the same run, and spconv side by side.

Workloads: the benchmark inputs in `benchmarks/data/` (a LArTPC-like event, 16->16 channels; a LiDAR-like scan,
32->32; the inputs the peer timings were measured on) and, where `JSPARSE3D_KITTI_SAMPLE` names the folder holding
it, the real SemanticKITTI scan 000000 voxelized at 0.05 m (32->32). For each, as medians over repeated runs
after warm-up (jitted, float32):

  index        hash index build (these are timed as plain repeated calls, like the peers)
  kmap         submanifold 3^3 kernel-map build (index included)
  subm_cached  submanifold conv 3^3 forward, map cached (the default implementation: native on CPU)
  subm_cached_xla  the same with implementation="xla" (the pure-XLA path, for reference)
  subm_fwd     the same, map built inside the timing
  subm_fwd_bwd forward + backward (features and weights), map built inside the timing
  down2        strided conv k2 s2 forward (output coordinates and map built inside)
  up2          transposed conv k2 s2 forward back to the fine coordinates (map cached)

plus the MACs over real pairs, and a dense [pairs, C_in] x [C_in, C_out] matmul of the same MACs (this machine's
GEMM throughput at that shape), timed in alternation with the cached conv, and the ratio of the two throughputs.

The wide workloads `lidar64`, `lidar128`, `lidar256` (the LiDAR sites at C -> C channels) also time each gradient
alone on the cached map (`subm_dgrad`: input, `subm_wgrad`: weights) with their throughputs, and, with spconv
installed in this Python, spconv's `SubMConv3d` on the same sites right after each round (1 and 2 threads;
`subm_fwd` and `subm_fwd_bwd`, index pairs rebuilt in every call on both sides).

With the `bench` extra installed (CPU torch 2.13.0 and spconv 2.3.8), or with `--peer-python PY` naming another
virtualenv's Python that has them, a peer harness (the script named by `JSPARSE3D_PEER_HARNESS`, which takes
`--peers`, `--workloads` and `--json`) runs spconv on the identical inputs in the same session, and the table
prints our time / spconv time per op. The machine is shared and noisy: compare ratios, not absolute times.

    python benchmarks/conv_cpu.py [--peer-python /path/to/python] [--out results/conv_cpu.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jsparse3d as js
from _timing import times_ms

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "data"
KITTI = Path(os.environ.get("JSPARSE3D_KITTI_SAMPLE", "/nonexistent")) / "000000.bin"
PEERS = Path(os.environ.get("JSPARSE3D_PEER_HARNESS", "/nonexistent"))
# Peer op names (bench_peers.py) for our ops.
PEER_OPS = {"subm_cached": "subm3_fwd_cached", "subm_cached_xla": "subm3_fwd_cached", "subm_fwd": "subm3_fwd",
            "subm_fwd_bwd": "subm3_fwd_bwd", "down2": "down2_fwd", "up2": "up2_fwd"}


def interleaved_ms(fa, a_args, fb, b_args, *, warmup: int, reps: int) -> tuple[list[float], list[float]]:
  """Times two functions in alternation, so that drift of the machine hits both alike.

  Each timed call follows an untimed call of the same function: both are measured with warm caches, as in a
  plain repeated loop (and as the peers are measured), not cold after the other's memory traffic.
  """
  ta, tb = [], []
  for _ in range(max(warmup - 1, 0)):
    jax.block_until_ready(fa(*a_args))
    jax.block_until_ready(fb(*b_args))
  for _ in range(reps):
    ta += times_ms(fa, *a_args, warmup=1, reps=1)
    tb += times_ms(fb, *b_args, warmup=1, reps=1)
  return ta, tb


def load_workloads(names):
  meta = json.loads((BENCH / "meta.json").read_text()) if BENCH.exists() else {}
  out = {}
  for name in names:
    if name == "kitti":
      if not KITTI.exists():
        print("skip kitti: set JSPARSE3D_KITTI_SAMPLE to the folder holding SemanticKITTI's 000000.bin")
        continue
      pts = np.fromfile(KITTI, np.float32).reshape(-1, 4)
      coords = np.unique(np.floor(pts[:, :3] / 0.05).astype(np.int32), axis=0)
      feats = np.random.default_rng(13).standard_normal((len(coords), 32), dtype=np.float32)
      out[name] = (coords, feats, 32, 32)
      continue
    wide = name.removeprefix("lidar")
    if wide.isdigit():  # lidar64, lidar128, lidar256: the LiDAR sites at wide channels, C -> C
      coords = np.load(BENCH / meta["lidar"]["file"])
      feats = np.random.default_rng(13).standard_normal((len(coords), int(wide)), dtype=np.float32)
      out[name] = (coords, feats, int(wide), int(wide))
      continue
    if name not in meta:
      raise SystemExit(f"error: no benchmark input {name!r} in {BENCH} (known: {sorted(meta)}); nothing measured.")
    m = meta[name]
    coords = np.load(BENCH / m["file"])
    feats = np.random.default_rng(m["feat_seed"]).standard_normal((len(coords), m["channels_in"]), dtype=np.float32)
    out[name] = (coords, feats, m["channels_in"], m["channels_out"])
  return out


def bench_workload(coords, feats, c_in, c_out, *, warmup, reps, gradients=False):
  rng = np.random.default_rng(0)
  x = js.SparseTensor.from_coords(coords, feats)
  w3 = jnp.asarray(rng.standard_normal((3, 3, 3, c_in, c_out), dtype=np.float32) * 0.1)
  w2 = jnp.asarray(rng.standard_normal((2, 2, 2, c_in, c_out), dtype=np.float32) * 0.1)
  w2t = jnp.asarray(rng.standard_normal((2, 2, 2, c_out, c_in), dtype=np.float32) * 0.1)
  probe = jnp.asarray(rng.standard_normal((x.capacity, c_out), dtype=np.float32))

  kmap, x_cached = js.ops.kernel_map(x, 3)
  pairs = int(kmap.num_pairs)
  y_down = js.ops.conv3d(x, w2, stride=2)

  def fwd_bwd(x, feats, w):
    loss = lambda f, w: jnp.vdot(js.ops.conv3d(x.replace(feats=f), w).feats, probe)
    return jax.grad(loss, argnums=(0, 1))(feats, w)

  cached = jax.jit(lambda x, w: js.ops.conv3d(x, w).feats)
  fns = {
      "index": (jax.jit(js.ops.build_index), (x.coords, x.num_valid)),
      "kmap": (jax.jit(lambda x: js.ops.kernel_map(x, 3)[0]), (x,)),
      "subm_cached": (cached, (x_cached, w3)),
      "subm_cached_xla": (jax.jit(lambda x, w: js.ops.conv3d(x, w, implementation="xla").feats), (x_cached, w3)),
      "subm_fwd": (jax.jit(lambda x, w: js.ops.conv3d(x, w).feats), (x, w3)),
      "subm_fwd_bwd": (jax.jit(fwd_bwd), (x, x.feats, w3)),
      "down2": (jax.jit(lambda x, w: js.ops.conv3d(x, w, stride=2).feats), (x, w2)),
      "up2": (jax.jit(lambda y, w: js.ops.conv_transpose3d(y, w).feats), (y_down, w2t)),
  }
  if gradients:  # each gradient alone, on the cached map: [N, C_in] input gradient, [27, C_in, C_out] weights
    dgrad = lambda x, f, w: jax.grad(lambda f: jnp.vdot(js.ops.conv3d(x.replace(feats=f), w).feats, probe))(f)
    wgrad = lambda x, w: jax.grad(lambda w: jnp.vdot(js.ops.conv3d(x, w).feats, probe))(w)
    fns["subm_dgrad"] = (jax.jit(dgrad), (x_cached, x.feats, w3))
    fns["subm_wgrad"] = (jax.jit(wgrad), (x_cached, w3))
  samples = {op: times_ms(f, *a, warmup=warmup, reps=reps) for op, (f, a) in fns.items()}
  # For the throughput ratio: the cached conv and a GEMM of the same MACs ([pairs, C_in] x [C_in, C_out]), timed
  # in alternation. (Alternating costs the conv ~15% here, as the GEMM's 2 x 14 MB evict its data; the plain
  # "subm_cached" above is the one compared with the peers, which are timed the same plain way.)
  a = jnp.asarray(rng.standard_normal((pairs, c_in), dtype=np.float32))
  b = jnp.asarray(rng.standard_normal((c_in, c_out), dtype=np.float32))
  samples["subm_cached_alt"], samples["gemm_same_macs"] = interleaved_ms(
      cached, (x_cached, w3), jax.jit(jnp.matmul), (a, b), warmup=warmup, reps=reps)
  return dict(voxels=int(x.num_valid), subm3_pairs=pairs, down2_voxels=int(y_down.num_valid),
              macs=pairs * c_in * c_out, samples_ms=samples)


def summarize(r):
  """Medians over every sample (pooled across rounds) and the throughput ratio."""
  ms = {op: statistics.median(t) for op, t in r["samples_ms"].items()}
  conv_gflops = 2 * r["macs"] / ms["subm_cached_alt"] / 1e6
  gemm_gflops = 2 * r["macs"] / ms["gemm_same_macs"] / 1e6
  out = dict({k: v for k, v in r.items() if k != "samples_ms"}, ms=ms, conv_gflops=conv_gflops,
             gemm_gflops=gemm_gflops, conv_over_gemm=conv_gflops / gemm_gflops)
  for grad in ("dgrad", "wgrad"):  # each gradient is one pass over the pairs with the forward's MACs
    if f"subm_{grad}" in ms:
      out[f"{grad}_gflops"] = 2 * r["macs"] / ms[f"subm_{grad}"] / 1e6
      out[f"{grad}_over_gemm"] = out[f"{grad}_gflops"] / gemm_gflops
  return out


def spconv_layer_ms(coords, feats, c_out, *, reps: int, threads: int) -> dict:
  """spconv 2.3.8's ``SubMConv3d`` on the same sites (batch 0) and features, in this process: forward, and forward
  + backward (input and weight gradients), both rebuilding the index pairs in every call as the jsparse3d
  ``subm_fwd`` / ``subm_fwd_bwd`` ops do."""
  from _peers import import_spconv
  torch, spc = import_spconv()
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  conv = spc.SubMConv3d(feats.shape[1], c_out, 3, bias=False)
  indices = torch.from_numpy(np.c_[np.zeros(len(coords)), coords].astype(np.int32))
  shape = [int(v) + 1 for v in coords.max(axis=0)]
  f = torch.from_numpy(feats)
  probe = torch.from_numpy(np.random.default_rng(0).standard_normal((len(coords), c_out), dtype=np.float32))

  def forward():
    with torch.no_grad():
      conv(spc.SparseConvTensor(f, indices, shape, 1))

  def forward_backward():
    fg = f.clone().requires_grad_(True)
    conv.weight.grad = None
    (conv(spc.SparseConvTensor(fg, indices, shape, 1)).features * probe).sum().backward()

  return {op: times_ms(fn, warmup=1, reps=reps) for op, fn in (("subm_fwd", forward),
                                                                ("subm_fwd_bwd", forward_backward))}


def run_peers(python, workloads, reps):
  if not PEERS.is_file():
    print("no peer timings: set JSPARSE3D_PEER_HARNESS to the peer harness script")
    return {}
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "peers.json"
    cmd = [python, str(PEERS), "--peers", "spconv-1t,spconv", "--workloads", ",".join(workloads), "--no-check",
           "--reps", str(reps), "--rounds", "1", "--out", str(out)]
    print("running peers:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=tmp, stdout=subprocess.DEVNULL)
    doc = json.loads(out.read_text())
  peers = {}
  for r in doc["results"]:
    if r.get("ok"):
      peers.setdefault(r["workload"], {})[r["peer"]] = {op: v["times_ms"] for op, v in r["ops"].items()
                                                        if isinstance(v, dict) and "times_ms" in v}
  return peers


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workloads", default="lartpc,lidar,kitti",
                  help="comma-separated: lartpc, lidar, kitti, and lidar<C> (the LiDAR sites at C -> C channels, "
                       "e.g. lidar64,lidar128,lidar256)")
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--reps", type=int, default=15)
  ap.add_argument("--rounds", type=int, default=2,
                  help="rounds of (jsparse3d, then peers); samples are pooled, so drift hits both sides")
  ap.add_argument("--peer-python", help="a Python with torch 2.13.0 + spconv 2.3.8 for side-by-side timings")
  ap.add_argument("--out", default=str(ROOT / "results" / "conv_cpu.json"))
  args = ap.parse_args()
  if args.peer_python is None and importlib.util.find_spec("spconv") and importlib.util.find_spec("torch"):
    args.peer_python = sys.executable  # the bench extra is installed here

  have_spconv = bool(importlib.util.find_spec("spconv") and importlib.util.find_spec("torch"))
  workloads = load_workloads(args.workloads.split(","))
  if not workloads:
    raise SystemExit("error: no workload could be loaded; nothing measured.")
  raw, peer_samples = {}, {}
  for round_ in range(args.rounds):
    for name, (coords, feats, c_in, c_out) in workloads.items():
      print(f"round {round_ + 1}/{args.rounds}: {name}: {len(coords)} voxels, {c_in}->{c_out} channels", flush=True)
      wide = name.removeprefix("lidar").isdigit()
      r = bench_workload(coords, feats, c_in, c_out, warmup=args.warmup, reps=args.reps, gradients=wide)
      if name in raw:
        for op, t in r["samples_ms"].items():
          raw[name]["samples_ms"][op] += t
      else:
        raw[name] = r
      if wide and have_spconv:  # the harness has no wide layers: spconv runs here, right after ours
        for threads in (1, 2):
          for op, t in spconv_layer_ms(coords, feats, c_out, reps=args.reps, threads=threads).items():
            peer_samples.setdefault(name, {}).setdefault(f"spconv-{threads}t", {}).setdefault(op, []).extend(t)
    peer_workloads = [w for w in workloads if w in ("lartpc", "lidar")]
    if args.peer_python and peer_workloads:
      for wl, by_peer in run_peers(args.peer_python, peer_workloads, args.reps).items():
        for peer, ops in by_peer.items():
          for op, t in ops.items():
            peer_samples.setdefault(wl, {}).setdefault(peer, {}).setdefault(op, []).extend(t)
  results = {name: summarize(r) for name, r in raw.items()}
  peers = {wl: {p: {op: statistics.median(t) for op, t in ops.items()} for p, ops in bp.items()}
           for wl, bp in peer_samples.items()}

  for name, r in results.items():
    print(f"\n== {name}: {r['voxels']} voxels, {r['subm3_pairs']} submanifold pairs, {r['macs'] / 1e6:.1f} M MACs")
    spc = peers.get(name, {})
    header = f"{'op':<16}{'jsparse3d ms':>13}" + "".join(f"{p + ' ms':>14}{'ratio':>8}" for p in spc)
    print(header)
    for op, ms in r["ms"].items():
      line = f"{op:<16}{ms:>13.2f}"
      for t in spc.values():
        pt = t.get(PEER_OPS.get(op, "")) or t.get(op)
        line += f"{pt:>14.2f}{ms / pt:>8.2f}" if pt else f"{'':>14}{'':>8}"
      print(line)
    print(f"conv throughput on real pairs {r['conv_gflops']:.1f} GFLOP/s; same-MAC GEMM {r['gemm_gflops']:.1f} "
          f"GFLOP/s; ratio {r['conv_over_gemm']:.2f}")
    for grad in ("dgrad", "wgrad"):
      if f"{grad}_gflops" in r:
        print(f"{'input' if grad == 'dgrad' else 'weight'} gradient {r[f'{grad}_gflops']:.1f} GFLOP/s; ratio to the "
              f"GEMM {r[f'{grad}_over_gemm']:.2f}")

  doc = dict(machine=dict(python=platform.python_version(), jax=jax.__version__, backend=jax.default_backend(),
                          devices=jax.device_count()),
             method=dict(statistic="median of all samples pooled over rounds", rounds=args.rounds,
                         warmup=args.warmup, reps_per_round=args.reps, dtype="float32",
                         interleaved="subm_cached and gemm_same_macs are timed in alternation"),
             results=results, peers=peers)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(doc, indent=2) + "\n")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  sys.exit(main())
