"""Pallas kernels of sparse convolution: a fused output-stationary gather-GEMM and a deterministic weight gradient.

Forward (also the input gradient, run on the transposed map with ``w[k].T``): program ``(i, j)`` owns output rows
``[i*bm, (i+1)*bm)`` and output channels ``[j*bn, (j+1)*bn)``. For each kernel offset it gathers the ``bm`` input
rows named by the neighbour table (rows without a neighbour read zero), multiplies them by that offset's weight
slice and accumulates in float32 registers; the gathered rows never go to HBM.

Weight gradient: program ``(k, s, j)`` owns offset ``k``, output channels ``[j*bn, (j+1)*bn)`` and split ``s`` of
the row blocks; it sums ``x[nbr[rows, k]]^T @ dy[rows]`` over its blocks in order into registers and writes one
partial. The partials are added in split order outside the kernel: no floating-point atomics, so the result is the
same on every run.

Shapes reaching the kernels are padded by ``api``: rows to a multiple of ``bm``, channels to powers of two >= 16
(the smallest tile Triton's dot takes), and the table is stored offset-major ``[K, N_out]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels import _config


def _gather_rows(x_ref, idx):
  """``x[idx]`` for a vector of row indices, zero where ``idx < 0``."""
  rows = x_ref[jnp.maximum(idx, 0), :]
  return jnp.where((idx >= 0)[:, None], rows, jnp.zeros((), rows.dtype))


def _forward_kernel(nbr_ref, x_ref, w_ref, o_ref, *, num_offsets: int, bm: int, bn: int, allow_tf32: bool):
  i, j = pl.program_id(0), pl.program_id(1)

  def offset(k, acc):
    idx = nbr_ref[k, pl.ds(i * bm, bm)]
    xg = _gather_rows(x_ref, idx)
    wk = w_ref[k, :, pl.ds(j * bn, bn)]
    return acc + pl_triton.dot(xg, wk, allow_tf32=allow_tf32)

  acc = jax.lax.fori_loop(0, num_offsets, offset, jnp.zeros((bm, bn), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def forward(x, w, nbr_t, *, bm: int, bn: int, num_warps: int, num_stages: int, interpret: bool | None,
            allow_tf32: bool = True):
  """x: [N_in, Cin_p]; w: [K, Cin_p, Cout_p]; nbr_t: int32 [K, N_out_p] (N_out_p a multiple of bm)."""
  k, n_out = nbr_t.shape
  c_out = w.shape[2]
  kernel = functools.partial(_forward_kernel, num_offsets=k, bm=bm, bn=bn, allow_tf32=allow_tf32)
  make = lambda interpret: pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((n_out, c_out), x.dtype),
      grid=(n_out // bm, c_out // bn),
      in_specs=[pl.no_block_spec] * 3,
      out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
      compiler_params=_config.compiler_params(num_warps, num_stages),
      interpret=interpret,
      name="sparse_conv_forward",
  )
  return _config.run(make, nbr_t, x, w, interpret=interpret)


def _wgrad_kernel(nbr_ref, x_ref, dy_ref, o_ref, *, bm: int, bn: int, blocks_per_split: int, num_blocks: int,
                  allow_tf32: bool):
  k, s, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  c_in = x_ref.shape[1]

  def block(t, acc):
    b = s * blocks_per_split + t
    live = b < num_blocks
    start = jnp.minimum(b, num_blocks - 1) * bm
    idx = jnp.where(live, nbr_ref[k, pl.ds(start, bm)], -1)
    xg = _gather_rows(x_ref, idx)
    g = dy_ref[pl.ds(start, bm), pl.ds(j * bn, bn)]
    g = jnp.where(live, g, jnp.zeros((), g.dtype))
    return acc + pl_triton.dot(xg, g, trans_a=True, allow_tf32=allow_tf32)

  acc = jax.lax.fori_loop(0, blocks_per_split, block, jnp.zeros((c_in, bn), jnp.float32))
  o_ref[...] = acc


def wgrad_partials(x, dy, nbr_t, *, bm: int, bn: int, splits: int, num_warps: int, num_stages: int,
                   interpret: bool | None, allow_tf32: bool = True):
  """``[splits, K, Cin_p, Cout_p]`` float32 partial sums; x: [N_in, Cin_p]; dy: [N_out_p, Cout_p]."""
  k, n_out = nbr_t.shape
  c_in, c_out = x.shape[1], dy.shape[1]
  num_blocks = n_out // bm
  per = -(-num_blocks // splits)
  kernel = functools.partial(_wgrad_kernel, bm=bm, bn=bn, blocks_per_split=per, num_blocks=num_blocks,
                             allow_tf32=allow_tf32)
  make = lambda interpret: pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((splits, k, c_in, c_out), jnp.float32),
      grid=(k, splits, c_out // bn),
      in_specs=[pl.no_block_spec] * 3,
      out_specs=pl.BlockSpec((None, None, c_in, bn), lambda k, s, j: (s, k, 0, j)),
      compiler_params=_config.compiler_params(num_warps, num_stages),
      interpret=interpret,
      name="sparse_conv_wgrad",
  )
  return _config.run(make, nbr_t, x, dy, interpret=interpret)
