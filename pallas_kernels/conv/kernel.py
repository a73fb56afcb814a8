"""Pallas kernels of sparse convolution: a fused output-stationary gather-GEMM and a deterministic weight gradient.

Forward (also the input gradient, run on the transposed map with ``w[k].T``): program ``(i, j)`` owns output rows
``[i*bm, (i+1)*bm)`` and output channels ``[j*bn, (j+1)*bn)``. For each kernel offset it gathers the ``bm`` input
rows named by the neighbour table (rows without a neighbour read zero), ``bk`` input channels at a time, multiplies
them by that offset's weight slice and accumulates in float32 registers; the gathered rows never go to HBM, and
tiling C_in keeps what a program stages (``bm x bk`` rows, ``bk x bn`` weights) the same size at any width.

Weight gradient: program ``(k, s, j, c)`` owns offset ``k``, output channels ``[j*bn, (j+1)*bn)``, input channels
``[c*bk, (c+1)*bk)`` and split ``s`` of the row blocks; it sums ``x[nbr[rows, k]]^T @ dy[rows]`` over its blocks
in order into registers and writes one partial. The partials are added in split order outside the kernel: no
floating-point atomics, so the result is the same on every run.

Shapes reaching the kernels are padded by ``api``: rows to a multiple of ``bm``, channels to multiples of their
tiles (powers of two >= 16, the smallest tile Triton's dot takes), and the table is stored offset-major
``[K, N_out]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels import _config


def _launch(kernel, out_shape, grid, out_specs, name: str, args, *, num_warps: int, num_stages: int,
            interpret: bool | None):
  """Runs ``kernel`` over ``grid`` with whole-array inputs ``args`` (the kernels index them themselves) and one
  blocked output, with Triton's launch parameters."""
  make = lambda interpret: pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, in_specs=[pl.no_block_spec] * len(args), out_specs=out_specs,
      compiler_params=_config.compiler_params(num_warps, num_stages), interpret=interpret, name=name)
  return _config.run(make, *args, interpret=interpret)


def _gather_rows(x_ref, idx, columns):
  """``x[idx, columns]`` for a vector of row indices, zero where ``idx < 0``."""
  rows = x_ref[jnp.maximum(idx, 0), columns]
  return jnp.where((idx >= 0)[:, None], rows, jnp.zeros((), rows.dtype))


def _forward_kernel(nbr_ref, x_ref, w_ref, o_ref, *, num_offsets: int, bm: int, bn: int, bk: int,
                    allow_tf32: bool):
  i, j = pl.program_id(0), pl.program_id(1)
  num_chunks = x_ref.shape[1] // bk

  def offset(k, acc):
    idx = nbr_ref[k, pl.ds(i * bm, bm)]

    def chunk(c, acc):  # C_in in tiles of bk: the staged rows and weights stay small at any width
      xg = _gather_rows(x_ref, idx, pl.ds(c * bk, bk))
      wk = w_ref[k, pl.ds(c * bk, bk), pl.ds(j * bn, bn)]
      return acc + pl_triton.dot(xg, wk, allow_tf32=allow_tf32)

    return jax.lax.fori_loop(0, num_chunks, chunk, acc)

  acc = jax.lax.fori_loop(0, num_offsets, offset, jnp.zeros((bm, bn), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def forward(x, w, nbr_t, *, bm: int, bn: int, bk: int, num_warps: int, num_stages: int, interpret: bool | None,
            allow_tf32: bool = True):
  """x: [N_in, Cin_p]; w: [K, Cin_p, Cout_p]; nbr_t: int32 [K, N_out_p] (N_out_p a multiple of bm, Cin_p of bk)."""
  k, n_out = nbr_t.shape
  c_out = w.shape[2]
  kernel = functools.partial(_forward_kernel, num_offsets=k, bm=bm, bn=bn, bk=bk, allow_tf32=allow_tf32)
  return _launch(kernel, jax.ShapeDtypeStruct((n_out, c_out), x.dtype), (n_out // bm, c_out // bn),
                 pl.BlockSpec((bm, bn), lambda i, j: (i, j)), "sparse_conv_forward", (nbr_t, x, w),
                 num_warps=num_warps, num_stages=num_stages, interpret=interpret)


def _wgrad_kernel(nbr_ref, x_ref, dy_ref, o_ref, *, bm: int, bn: int, bk: int, blocks_per_split: int,
                  num_blocks: int, allow_tf32: bool):
  k, s, j, c = pl.program_id(0), pl.program_id(1), pl.program_id(2), pl.program_id(3)

  def block(t, acc):
    b = s * blocks_per_split + t
    live = b < num_blocks
    start = jnp.minimum(b, num_blocks - 1) * bm
    idx = jnp.where(live, nbr_ref[k, pl.ds(start, bm)], -1)
    xg = _gather_rows(x_ref, idx, pl.ds(c * bk, bk))
    g = dy_ref[pl.ds(start, bm), pl.ds(j * bn, bn)]
    g = jnp.where(live, g, jnp.zeros((), g.dtype))
    return acc + pl_triton.dot(xg, g, trans_a=True, allow_tf32=allow_tf32)

  acc = jax.lax.fori_loop(0, blocks_per_split, block, jnp.zeros((bk, bn), jnp.float32))
  o_ref[...] = acc


def wgrad_partials(x, dy, nbr_t, *, bm: int, bn: int, bk: int, splits: int, num_warps: int, num_stages: int,
                   interpret: bool | None, allow_tf32: bool = True):
  """``[splits, K, Cin_p, Cout_p]`` float32 partial sums; x: [N_in, Cin_p]; dy: [N_out_p, Cout_p]; program
  ``(k, s, j, c)`` owns input channels ``[c*bk, (c+1)*bk)``."""
  k, n_out = nbr_t.shape
  c_in, c_out = x.shape[1], dy.shape[1]
  num_blocks = n_out // bm
  per = -(-num_blocks // splits)
  kernel = functools.partial(_wgrad_kernel, bm=bm, bn=bn, bk=bk, blocks_per_split=per, num_blocks=num_blocks,
                             allow_tf32=allow_tf32)
  return _launch(kernel, jax.ShapeDtypeStruct((splits, k, c_in, c_out), jnp.float32),
                 (k, splits, c_out // bn, c_in // bk),
                 pl.BlockSpec((None, None, bk, bn), lambda k, s, j, c: (s, k, c, j)), "sparse_conv_wgrad",
                 (nbr_t, x, dy), num_warps=num_warps, num_stages=num_stages, interpret=interpret)


# ------------------------------------------------------------------------------------------------------------
# The pair-compacted dataflow: multiply real pairs only (blocks of pairs that share one offset, as the kernel map
# stores them), then sum each output row's products in a fixed order. No floating-point atomics anywhere.


def _products_kernel(nb_ref, off_ref, rows_ref, x_ref, w_ref, o_ref, *, bm: int, bn: int, bk: int,
                     pairs_per_block: int, num_rows: int, allow_tf32: bool):
  r, j = pl.program_id(0), pl.program_id(1)
  b = (r * bm) // pairs_per_block
  k = off_ref[b]
  idx = rows_ref[pl.ds(r * bm, bm)]
  idx = jnp.where((b < nb_ref[0]) & (idx < num_rows), idx, -1)  # padding blocks and sentinel pairs read zero

  def chunk(c, acc):
    xg = _gather_rows(x_ref, idx, pl.ds(c * bk, bk))
    return acc + pl_triton.dot(xg, w_ref[k, pl.ds(c * bk, bk), pl.ds(j * bn, bn)], allow_tf32=allow_tf32)

  o_ref[...] = jax.lax.fori_loop(0, x_ref.shape[1] // bk, chunk, jnp.zeros((bm, bn), jnp.float32))


def pair_products(x, w, rows, block_offset, num_blocks, *, pairs_per_block: int, bm: int, bn: int, bk: int,
                  num_warps: int, num_stages: int, interpret: bool | None, allow_tf32: bool = True):
  """``[P, Cout_p]`` float32: ``x[rows[p]] @ w[block_offset[p // pairs_per_block]]`` for the pairs of the first
  ``num_blocks`` blocks, zero elsewhere. x: [N, Cin_p]; w: [K, Cin_p, Cout_p]; rows: int32 [P] (P a multiple of
  ``pairs_per_block``, itself a multiple of ``bm``; rows >= N read zero); num_blocks: int32 [1]."""
  p, c_out = rows.shape[0], w.shape[2]
  kernel = functools.partial(_products_kernel, bm=bm, bn=bn, bk=bk, pairs_per_block=pairs_per_block,
                             num_rows=x.shape[0], allow_tf32=allow_tf32)
  return _launch(kernel, jax.ShapeDtypeStruct((p, c_out), jnp.float32), (p // bm, c_out // bn),
                 pl.BlockSpec((bm, bn), lambda r, j: (r, j)), "sparse_conv_pair_products",
                 (num_blocks, block_offset, rows, x, w), num_warps=num_warps, num_stages=num_stages,
                 interpret=interpret)


def _sum_kernel(table_ref, prod_ref, o_ref, *, num_slots: int, bm: int, bn: int):
  i, j = pl.program_id(0), pl.program_id(1)

  def slot(k, acc):
    return acc + _gather_rows(prod_ref, table_ref[k, pl.ds(i * bm, bm)], pl.ds(j * bn, bn))

  acc = jax.lax.fori_loop(0, num_slots, slot, jnp.zeros((bm, bn), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def gather_sum(products, table_t, *, dtype, bm: int, bn: int, num_warps: int, num_stages: int,
               interpret: bool | None):
  """``out[d] = sum_k products[table[d, k]]`` in ``k`` order (-1 adds nothing), in ``dtype``.
  products: float32 [P, C_p]; table_t: int32 [K, N_out_p] (offset-major, N_out_p a multiple of bm)."""
  k, n_out = table_t.shape
  c = products.shape[1]
  return _launch(functools.partial(_sum_kernel, num_slots=k, bm=bm, bn=bn),
                 jax.ShapeDtypeStruct((n_out, c), dtype), (n_out // bm, c // bn),
                 pl.BlockSpec((bm, bn), lambda i, j: (i, j)), "sparse_conv_gather_sum", (table_t, products),
                 num_warps=num_warps, num_stages=num_stages, interpret=interpret)


def _pair_wgrad_kernel(nb_ref, a_rows_ref, b_rows_ref, x_ref, dy_ref, o_ref, *, bm: int, bn: int, bk: int,
                       pairs_per_block: int, num_x: int, num_dy: int, allow_tf32: bool):
  b, j, c = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  live = b < nb_ref[0]

  def tile(t, acc):
    start = b * pairs_per_block + t * bm
    ia, ib = a_rows_ref[pl.ds(start, bm)], b_rows_ref[pl.ds(start, bm)]
    ia = jnp.where(live & (ia < num_x), ia, -1)
    ib = jnp.where(live & (ib < num_dy), ib, -1)
    xg = _gather_rows(x_ref, ia, pl.ds(c * bk, bk))
    g = _gather_rows(dy_ref, ib, pl.ds(j * bn, bn))
    return acc + pl_triton.dot(xg, g, trans_a=True, allow_tf32=allow_tf32)

  o_ref[...] = jax.lax.fori_loop(0, pairs_per_block // bm, tile, jnp.zeros((bk, bn), jnp.float32))


def pair_wgrad_partials(x, dy, x_rows, dy_rows, num_blocks, *, pairs_per_block: int, bm: int, bn: int, bk: int,
                        num_warps: int, num_stages: int, interpret: bool | None, allow_tf32: bool = True):
  """``[P // pairs_per_block, Cin_p, Cout_p]`` float32: per block of pairs, ``sum_p x[x_rows[p]]^T @
  dy[dy_rows[p]]`` (zero for blocks past ``num_blocks``; rows out of range read zero)."""
  p, c_in, c_out = x_rows.shape[0], x.shape[1], dy.shape[1]
  blocks = p // pairs_per_block
  kernel = functools.partial(_pair_wgrad_kernel, bm=bm, bn=bn, bk=bk, pairs_per_block=pairs_per_block,
                             num_x=x.shape[0], num_dy=dy.shape[0], allow_tf32=allow_tf32)
  return _launch(kernel, jax.ShapeDtypeStruct((blocks, c_in, c_out), jnp.float32),
                 (blocks, c_out // bn, c_in // bk), pl.BlockSpec((None, bk, bn), lambda b, j, c: (b, c, j)),
                 "sparse_conv_pair_wgrad", (num_blocks, x_rows, dy_rows, x, dy), num_warps=num_warps,
                 num_stages=num_stages, interpret=interpret)
