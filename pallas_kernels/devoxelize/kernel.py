"""Pallas kernels of trilinear devoxelization, forward and feature gradient, without floating-point atomics.

Forward: each program takes a block of points and visits their 8 lattice corners one at a time: it probes the
hash table for the corner (the probe loop of :mod:`pallas_kernels.hash.kernel`), gathers the corner row's
features and adds them with the trilinear weight, in float32; at the end it divides by the sum of the weights of
the corners found (renormalisation). It also writes the corner rows and raw weights, which the backward reuses.

Backward: the feature gradient of a voxel is the sum of ``weight * d_out[point]`` over the (point, corner)
entries that name it. The API sorts the entries by voxel (a stable sort: a fixed order); each program takes a
block of voxels and walks their entry lists in that order, so the sums are the same on every run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _config
from pallas_kernels.hash import kernel as hash_kernel
from pallas_kernels.hash import keys


def _forward_kernel(p_ref, batch_ref, slots_ref, key_hi_ref, key_lo_ref, feats_ref, out_ref, rows_ref, w_ref,
                    status_ref, *, bm: int, capacity: int, stride: tuple):
  start = pl.program_id(0) * bm
  b = batch_ref[pl.ds(start, bm)]
  p = [p_ref[a, pl.ds(start, bm)] for a in range(3)]
  base = [jnp.floor(v) for v in p]
  frac = [v - f for v, f in zip(p, base)]
  cell = [f.astype(jnp.int32) for f in base]
  def corner(j, carry):  # one corner at a time, in a loop (not unrolled): few live registers
    acc, total, unfinished = carry
    bits = [(j >> 2) & 1, (j >> 1) & 1, j & 1]  # the corner order of CORNERS in the reference
    ok, hi, lo = keys.pack(b, *((c + d) * s for c, d, s in zip(cell, bits, stride)))
    found, active = hash_kernel.probe(slots_ref, key_hi_ref, key_lo_ref, ok & (b >= 0), hi, lo, capacity=capacity,
                                      bm=bm)
    w = jnp.ones((bm,), jnp.float32)
    for f, d in zip(frac, bits):
      w = w * jnp.where(d == 1, f, 1.0 - f)
    w = jnp.where(found >= 0, w, 0.0)
    vals = feats_ref[jnp.maximum(found, 0), :].astype(jnp.float32)
    rows_ref[j, pl.ds(start, bm)] = found
    w_ref[j, pl.ds(start, bm)] = w  # unnormalised; the API divides by the total
    return acc + vals * w[:, None], total + w, unfinished | active

  init = (jnp.zeros((bm, out_ref.shape[1]), jnp.float32), jnp.zeros((bm,), jnp.float32),
          jnp.zeros((bm,), jnp.bool_))
  acc, total, unfinished = jax.lax.fori_loop(0, 8, corner, init)
  out_ref[pl.ds(start, bm), :] = (acc * (1.0 / jnp.maximum(total, 1e-12))[:, None]).astype(out_ref.dtype)
  status_ref[pl.ds(start, bm)] = jnp.where(unfinished, hash_kernel.UNFINISHED, 0)


def forward(p_t, batch, slots, key_hi, key_lo, feats, *, stride: tuple, bm: int, num_warps: int, num_stages: int,
            interpret: bool | None):
  """p_t: float32 [3, P_p] lattice coordinates (voxel units / stride); batch: int32 [P_p]; feats: [N, C_p].

  Returns ``(out [P_p, C_p], rows int32[8, P_p], weights float32[8, P_p], status int32[P_p])``; the weights are
  the corners' trilinear weights before renormalisation (zero for missing corners).
  """
  n_p, c = p_t.shape[1], feats.shape[1]
  kernel = functools.partial(_forward_kernel, bm=bm, capacity=slots.shape[0] - 1, stride=tuple(stride))
  make = lambda interpret: pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((n_p, c), feats.dtype), jax.ShapeDtypeStruct((8, n_p), jnp.int32),
                 jax.ShapeDtypeStruct((8, n_p), jnp.float32), jax.ShapeDtypeStruct((n_p,), jnp.int32)),
      grid=(n_p // bm,),
      in_specs=[pl.no_block_spec] * 6,
      out_specs=(pl.no_block_spec,) * 4,
      compiler_params=_config.compiler_params(num_warps, num_stages),
      interpret=interpret,
      name="devoxelize_forward",
  )
  return _config.run(make, p_t, batch, slots, key_hi, key_lo, feats, interpret=interpret)


def _backward_kernel(start_ref, count_ref, point_ref, weight_ref, g_ref, out_ref, *, bm: int):
  v0 = pl.program_id(0) * bm
  first = start_ref[pl.ds(v0, bm)]
  count = count_ref[pl.ds(v0, bm)]
  longest = jnp.max(count)

  def entry(t, acc):
    live = t < count
    e = jnp.where(live, first + t, 0)
    p = point_ref[e]
    w = jnp.where(live, weight_ref[e], 0.0)
    return acc + g_ref[p, :].astype(jnp.float32) * w[:, None]

  acc = jax.lax.fori_loop(0, longest, entry, jnp.zeros((bm, out_ref.shape[1]), jnp.float32))
  out_ref[pl.ds(v0, bm), :] = acc.astype(out_ref.dtype)


def backward(start, count, point, weight, g, num_voxels_p: int, *, bm: int, num_warps: int, num_stages: int,
             interpret: bool | None):
  """Voxel-major entry lists (start, count int32[V_p]; point int32[E]; weight float32[E]) and d_out [P, C_p]
  -> d_feats [V_p, C_p]."""
  kernel = functools.partial(_backward_kernel, bm=bm)
  make = lambda interpret: pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((num_voxels_p, g.shape[1]), g.dtype),
      grid=(num_voxels_p // bm,),
      in_specs=[pl.no_block_spec] * 5,
      out_specs=pl.no_block_spec,
      compiler_params=_config.compiler_params(num_warps, num_stages),
      interpret=interpret,
      name="devoxelize_backward",
  )
  return _config.run(make, start, count, point, weight, g, interpret=interpret)
