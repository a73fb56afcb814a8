"""``python -m pallas_kernels.report``: compile every kernel for sm_80 and sm_90 on this machine (no GPU needed)
and print registers, spills, shared memory and a static roofline per kernel.

Each kernel is built at its default block sizes and at one other configuration, on representative shapes
(a 4,096-row tensor, a 3^3 kernel, 32 channels; 8,192 points for devoxelization). The roofline columns are per
output row (per point for devoxelization, per inserted or queried row for the hash table) at the default block
sizes, counting every byte a program moves to or from global memory once (no cache reuse) and the FLOPs its dots
execute, including the zero rows of missing neighbours; ``AI`` is FLOPs per byte.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import _aot
from pallas_kernels.conv import api as conv_api
from pallas_kernels.devoxelize import api as devox_api
from pallas_kernels.hash import api as hash_api

ROWS, K, CHANNELS, POINTS = 4096, 27, 32, 8192
PAIRS_PER_BLOCK = 32  # what jsparse3d's kernel maps use at 4,096 rows (ops._kernel_map.block_size_for)
PAIRS = ROWS * (K // 2) // PAIRS_PER_BLOCK * PAIRS_PER_BLOCK + PAIRS_PER_BLOCK  # a mirrored map's half


@dataclasses.dataclass(frozen=True)
class Case:
  kernel: str  # what the report calls it
  show: str  # prefix of the kernel names this case reports (a devoxelize case also builds a hash table)
  config: str  # block sizes, in words
  default: bool
  fn: object
  args: tuple


def _inputs(c_in=CHANNELS, c_out=CHANNELS, dtype=jnp.float32):
  x = jax.ShapeDtypeStruct((ROWS, c_in), dtype)
  w = jax.ShapeDtypeStruct((K, c_in, c_out), dtype)
  dy = jax.ShapeDtypeStruct((ROWS, c_out), dtype)
  nbr = jax.ShapeDtypeStruct((ROWS, K), jnp.int32)
  return x, w, dy, nbr


def cases() -> list[Case]:
  x, w, dy, nbr = _inputs()
  coords = jax.ShapeDtypeStruct((ROWS, 4), jnp.int32)
  offsets = np.array([[i - 1, j - 1, k - 1] for i in range(3) for j in range(3) for k in range(3)], np.int32)
  default_conv = conv_api.BlockSizes.for_channels(CHANNELS, CHANNELS)
  other_conv = conv_api.BlockSizes(rows=64, out_channels=16, wgrad_splits=4, num_warps=4, num_stages=3)
  out = []
  for bs, is_default in ((default_conv, True), (other_conv, False)):
    label = f"rows {bs.rows}, out ch {bs.out_channels}, warps {bs.num_warps}, stages {bs.num_stages}"
    out.append(Case("sparse_conv_forward", "sparse_conv", label, is_default,
                    lambda x, w, n, bs=bs: conv_api.conv_forward(x, w, n, block_sizes=bs, interpret=False),
                    (x, w, nbr)))
    out.append(Case("sparse_conv_wgrad", "sparse_conv", label + f", splits {bs.wgrad_splits}", is_default,
                    lambda x, d, n, bs=bs: conv_api.conv_wgrad(x, d, n, block_sizes=bs, interpret=False),
                    (x, dy, nbr)))
  pairs = jax.ShapeDtypeStruct((PAIRS,), jnp.int32)
  map_args = (pairs, pairs, jax.ShapeDtypeStruct((PAIRS // PAIRS_PER_BLOCK,), jnp.int32),
              jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((ROWS,), jnp.bool_))
  kw = dict(pairs_per_block=PAIRS_PER_BLOCK, center=K // 2, mirrored=True, interpret=False)
  out.append(Case("sparse_conv_pair_products + sparse_conv_gather_sum", "sparse_conv", "pair-compacted, defaults",
                  True, lambda x, w, *m: conv_api.pairs_forward(x, w, *m, num_out=ROWS, **kw), (x, w, *map_args)))
  out.append(Case("sparse_conv_pair_wgrad", "sparse_conv", "pair-compacted, defaults", True,
                  lambda x, d, *m: conv_api.pairs_wgrad(x, d, *m, num_offsets=K, **kw), (x, dy, *map_args)))
  xb, wb, _, _ = _inputs(dtype=jnp.bfloat16)
  out.append(Case("sparse_conv_forward", "sparse_conv", "bfloat16, defaults", False,
                  lambda x, w, n: conv_api.conv_forward(x, w, n, interpret=False), (xb, wb, nbr)))
  for bs, is_default in ((hash_api.BlockSizes(), True), (hash_api.BlockSizes(build_rows=64, query_rows=64,
                                                                              num_warps=2), False)):
    label = f"build rows {bs.build_rows}, query rows {bs.query_rows}, warps {bs.num_warps}"
    out.append(Case("hash_build + hash_query", "hash", label, is_default,
                    lambda c, bs=bs: hash_api.query_table(
                        hash_api.build_table(c, ROWS, block_sizes=bs, interpret=False), c, offsets,
                        block_sizes=bs, interpret=False)[0], (coords,)))
  xyz = jax.ShapeDtypeStruct((POINTS, 3), jnp.float32)
  batch = jax.ShapeDtypeStruct((POINTS,), jnp.int32)
  for channels, bs, is_default in ((CHANNELS, devox_api.BlockSizes.for_channels(CHANNELS), True),
                                   (128, devox_api.BlockSizes.for_channels(128), True),
                                   (CHANNELS, devox_api.BlockSizes(points=16, voxels=32), False)):
    label = f"{channels} ch: points {bs.points}, voxels {bs.voxels}, warps {bs.num_warps}"
    feats = jax.ShapeDtypeStruct((ROWS, channels), jnp.float32)

    def grad(c, f, p, b, bs=bs):
      table = hash_api.build_table(c, ROWS, interpret=False)
      return jax.grad(lambda f: jnp.sum(devox_api.devoxelize(table, f, p, b, block_sizes=bs,
                                                             interpret=False)[0]))(f)
    out.append(Case("devoxelize (+ hash_build, hash_query)", "devoxelize", label, is_default, grad,
                    (coords, feats, xyz, batch)))
  return out


# (C_in, C_out) of every convolution in the models (U-ResNet 16-80; MinkUNet cr 1.0 up to 384 -> 256), float32
# and bfloat16; float16 compiles to the same code as bfloat16.
TIERS = ((16, 16), (32, 32), (64, 64), (128, 128), (256, 256), (384, 256))

# sm_80 and sm_90 per multiprocessor: 64K registers, 64 resident warps, 32 resident blocks; shared memory a block
# may use (A100 163 KB, H100/H200 227 KB).
_SM = {80: dict(smem=166912), 90: dict(smem=232448)}


def occupancy(b: _aot.KernelBuild, num_warps: int) -> float:
  """Resident warps per multiprocessor over the 64 possible, as registers, shared memory and warps allow."""
  by_regs = 65536 // max(1, b.registers * 32 * num_warps)
  by_smem = _SM[b.arch]["smem"] // max(1, b.shared + b.shared_dynamic)
  blocks = min(by_regs, by_smem, 64 // num_warps, 32)
  return blocks * num_warps / 64


def tier_cases() -> list[Case]:
  """The conv kernels at their default block sizes at every channel tier the models use, float32 and bfloat16."""
  out = []
  for c_in, c_out in TIERS:
    for dtype in (jnp.float32, jnp.bfloat16):
      x, w, dy, nbr = _inputs(c_in, c_out, dtype)
      bs = conv_api.BlockSizes.for_channels(c_in, c_out)
      label = (f"{c_in}->{c_out} {jnp.dtype(dtype).name}: rows {bs.rows}, out ch {bs.out_channels}, in ch "
               f"{min(bs.in_channels, c_in)}, warps {bs.num_warps}")
      out.append(Case("sparse_conv_forward", "sparse_conv_forward", label, True,
                      lambda x, w, n: conv_api.conv_forward(x, w, n, interpret=False), (x, w, nbr)))
      out.append(Case("sparse_conv_wgrad", "sparse_conv_wgrad", label, True,
                      lambda x, d, n: conv_api.conv_wgrad(x, d, n, interpret=False), (x, dy, nbr)))
  return out


def roofline(dtype_bytes: int = 4) -> list[tuple[str, float, float]]:
  """(kernel, FLOPs, bytes) per output row at the default block sizes, for the report's shapes."""
  bs = conv_api.BlockSizes.for_channels(CHANNELS, CHANNELS)
  c, d = CHANNELS, dtype_bytes
  fwd_bytes = K * 4 + K * c * d + K * c * c * d / bs.rows + c * d  # table, gathered rows, weights per row, out
  wgrad_bytes = K * 4 + K * c * d + K * c * d  # table, gathered rows, dy re-read per offset
  probes = 1.5  # expected linear-probing steps per lookup at load 1/2 (hit)
  build_bytes = 16 + 2 * probes * 4 + 16  # coords, atomics (read + write), own-key query
  query_bytes = 16 + K * (probes * (4 + 8) + 4)  # coords, per offset: slots + stored keys, output
  devox_bytes = 16 + 8 * (probes * 12 + c * d + 8) + c * d  # xyz + batch, 8 corners: probe, gather, residuals
  return [("sparse_conv_forward", 2 * K * c * c, fwd_bytes), ("sparse_conv_wgrad", 2 * K * c * c, wgrad_bytes),
          ("hash_build", 0, build_bytes), ("hash_query (27 offsets)", 0, query_bytes),
          ("devoxelize_forward", 2 * 8 * c, devox_bytes),
          ("devoxelize_backward (8 entries)", 2 * 8 * c, 8 * (8 + c * d) + c * d)]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--archs", type=int, nargs="+", default=list(_aot.ARCHS))
  args = ap.parse_args(argv)
  print(f"jax {jax.__version__}; shapes: {ROWS} rows, K={K}, {CHANNELS} channels, {POINTS} points\n")
  header = ("| kernel | block sizes | sm | regs | spill st/ld (B) | stack (B) | smem (B) | MMA |\n"
            "|---|---|---|---|---|---|---|---|")
  print(header)
  failures = []
  for case in cases():
    for b in _aot.compile_function(case.fn, *case.args, archs=tuple(args.archs)):
      if not b.name.startswith(case.show):
        continue
      mark = " (default)" if case.default else ""
      print(f"| {b.name} | {case.config}{mark} | {b.arch} | {b.registers} | {b.spill_stores}/{b.spill_loads} | "
            f"{b.stack} | {b.shared + b.shared_dynamic} | {'yes' if b.mma else 'no'} |", flush=True)
      if case.default and (b.spill_stores or b.spill_loads):
        failures.append(f"{b.name} sm_{b.arch}")
  print("\nEvery channel tier of the models, default block sizes:\n")
  print("| kernel | tier and block sizes | sm | regs | spill st/ld (B) | smem (B) | occupancy |\n"
        "|---|---|---|---|---|---|---|")
  for case in tier_cases():
    warps = int(case.config.rsplit("warps ", 1)[1])
    for b in _aot.compile_function(case.fn, *case.args, archs=tuple(args.archs)):
      if b.name.startswith(case.show):
        print(f"| {b.name} | {case.config} | {b.arch} | {b.registers} | {b.spill_stores}/{b.spill_loads} | "
              f"{b.shared + b.shared_dynamic} | {occupancy(b, warps):.0%} |", flush=True)
        if b.spill_stores or b.spill_loads or b.registers > 128:
          failures.append(f"{b.name} {case.config} sm_{b.arch}: {b.registers} registers")
  print("\n| kernel (per output row, defaults, float32) | FLOPs | bytes | AI (FLOP/B) |\n|---|---|---|---|")
  for name, flops, nbytes in roofline():
    print(f"| {name} | {flops:,.0f} | {nbytes:,.0f} | {flops / nbytes:.2f} |")
  if failures:
    raise SystemExit(f"spills or more than 128 registers at default block sizes: {failures}")


if __name__ == "__main__":
  main()
