"""Sparse convolution on GPU with Pallas: validation, padding and block sizes around :mod:`.kernel`.

``conv_forward(x, w, nbr)`` computes ``out[d] = sum_k x[nbr[d, k]] @ w[k]`` (the forward of a convolution, or its
input gradient when given the transposed table and ``w[k].T``); ``conv_wgrad(x, dy, nbr)`` computes
``dw[k] = sum_d x[nbr[d, k]]^T @ dy[d]``. Both accumulate in float32 and take float32, bfloat16 or float16.
``pairs_forward`` and ``pairs_wgrad`` compute the same sums from a kernel map's pair lists (the pair-compacted
dataflow: real pairs only); :func:`dataflow` says which of the two a convolution uses.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from pallas_kernels import _config
from pallas_kernels import _tuning
from pallas_kernels.conv import kernel

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the convolution kernels.

  Attributes:
    rows: output rows per program (``bm``), a power of two >= 16.
    out_channels: output channels per program (``bn``), a power of two >= 16 (capped at the padded C_out).
    in_channels: input channels per step of the reduction (``bk``), a power of two >= 16 (capped at the padded
      C_in); wider layers loop over C_in in tiles of this size.
    wgrad_splits: row-block splits of the weight gradient (more programs, more partials to add).
    num_warps, num_stages: Triton launch parameters.
  """
  rows: int = 32
  out_channels: int = 32
  in_channels: int = 64
  wgrad_splits: int = 8
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    _config.check_block_sizes(self, ("rows", "out_channels", "in_channels"))
    if self.wgrad_splits < 1:
      raise ValueError(f"BlockSizes.wgrad_splits must be positive, got {self.wgrad_splits}.")

  @classmethod
  def for_channels(cls, c_in: int, c_out: int) -> "BlockSizes":
    """Defaults by channel count: wider layers take taller tiles and more warps (registers per thread stay
    bounded: the accumulator is rows x out_channels floats over 32 * num_warps threads). Every tier compiles to
    at most 128 registers per thread with no spills (``python -m pallas_kernels.report``); faster tiles that need
    more registers on a given GPU come from the tuning file."""
    width = max(_config.next_pow2(c_in, 16), _config.next_pow2(c_out, 16))
    if width <= 32:
      return cls(rows=32, out_channels=min(32, _config.next_pow2(c_out, 16)), num_warps=4)
    if width <= 64:
      return cls(rows=64, out_channels=min(64, _config.next_pow2(c_out, 16)), num_warps=4)
    return cls(rows=64, out_channels=64, num_warps=8)

  @classmethod
  def choose(cls, kernel: str, dtype, c_in: int, c_out: int) -> "BlockSizes":
    """The block sizes ``kernel`` (``"conv_forward"`` or ``"conv_wgrad"``) runs with when none are given: those
    the tuning file records for this GPU, channels and dtype (:mod:`pallas_kernels._tuning`), else
    :meth:`for_channels`."""
    tuned = _tuning.lookup(kernel, dtype, c_in, c_out)
    return cls(**tuned) if tuned else cls.for_channels(c_in, c_out)


def _check_features(x, what):
  if x.ndim != 2:
    raise ValueError(f"{what}: x must be [N, C], got {x.shape}.")
  if jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in DTYPES]:
    raise TypeError(f"{what}: features must be float32, bfloat16 or float16, got {x.dtype}; cast them first.")


def _check(x, nbr, what):
  _check_features(x, what)
  if nbr.ndim != 2 or nbr.dtype != jnp.int32:
    raise ValueError(f"{what}: nbr must be an int32 [N_out, K] neighbour table, got {nbr.dtype} {nbr.shape}.")


def _tiles(bs: BlockSizes, c_in: int, c_out: int):
  """``(bk, bn, Cin_p, Cout_p)``: the channel tiles (capped at each width's next power of two) and the widths
  padded to multiples of them."""
  bk = min(bs.in_channels, _config.next_pow2(c_in, 16))
  bn = min(bs.out_channels, _config.next_pow2(c_out, 16))
  return bk, bn, _config.round_up(c_in, bk), _config.round_up(c_out, bn)


def _table(nbr, rows):
  n_out = nbr.shape[0]
  return _config.pad(nbr, 0, _config.round_up(n_out, rows), -1).T  # offset-major, padded rows meet nothing


def conv_forward(x, w, nbr, *, block_sizes: BlockSizes | None = None, interpret: bool | None = None,
                 allow_tf32: bool = True):
  """``[N_out, C_out]`` in ``x``'s dtype. x: [N_in, C_in]; w: [K, C_in, C_out] (x's dtype); nbr: int32 [N_out, K].

  ``interpret=None`` runs in Pallas interpret mode where lowered for the CPU and with Triton where lowered for a
  GPU; ``allow_tf32`` lets float32 products use tensor-core TF32 (as cuDNN convolutions do by default).
  """
  _check(x, nbr, "conv_forward")
  if w.ndim != 3 or w.shape[0] != nbr.shape[1] or w.shape[1] != x.shape[1]:
    raise ValueError(f"conv_forward: w must be [K={nbr.shape[1]}, C_in={x.shape[1]}, C_out], got {w.shape}.")
  if w.dtype != x.dtype:
    raise TypeError(f"conv_forward: w is {w.dtype} but x is {x.dtype}; cast one to the other.")
  n_out, (_, c_in, c_out) = nbr.shape[0], w.shape
  bs = block_sizes or BlockSizes.choose("conv_forward", x.dtype, c_in, c_out)
  bk, bn, cin_p, cout_p = _tiles(bs, c_in, c_out)
  xp = _config.pad(x, 1, cin_p)
  wp = _config.pad(_config.pad(w, 1, cin_p), 2, cout_p)
  out = kernel.forward(xp, wp, _table(nbr, bs.rows), bm=bs.rows, bn=bn, bk=bk, num_warps=bs.num_warps,
                       num_stages=bs.num_stages, interpret=interpret, allow_tf32=allow_tf32)
  return out[:n_out, :c_out]


def conv_wgrad(x, dy, nbr, *, block_sizes: BlockSizes | None = None, interpret: bool | None = None,
               allow_tf32: bool = True):
  """``[K, C_in, C_out]`` float32. x: [N_in, C_in]; dy: [N_out, C_out]; nbr: int32 [N_out, K].

  Deterministic: per-split partials are summed in split order.
  """
  _check(x, nbr, "conv_wgrad")
  if dy.ndim != 2 or dy.shape[0] != nbr.shape[0]:
    raise ValueError(f"conv_wgrad: dy must be [N_out={nbr.shape[0]}, C_out], got {dy.shape}.")
  if dy.dtype != x.dtype:
    raise TypeError(f"conv_wgrad: dy is {dy.dtype} but x is {x.dtype}; cast one to the other.")
  c_in, c_out = x.shape[1], dy.shape[1]
  bs = block_sizes or BlockSizes.choose("conv_wgrad", x.dtype, c_in, c_out)
  bk, bn, cin_p, cout_p = _tiles(bs, c_in, c_out)
  table = _table(nbr, bs.rows)
  dyp = _config.pad(_config.pad(dy, 1, cout_p), 0, table.shape[1])
  splits = max(1, min(bs.wgrad_splits, table.shape[1] // bs.rows))
  parts = kernel.wgrad_partials(_config.pad(x, 1, cin_p), dyp, table, bm=bs.rows, bn=bn, bk=bk, splits=splits,
                                num_warps=bs.num_warps, num_stages=bs.num_stages,
                                interpret=interpret, allow_tf32=allow_tf32)
  total = parts[0]
  for s in range(1, splits):  # a fixed order
    total = total + parts[s]
  return total[:, :c_in, :c_out]


# ------------------------------------------------------------------------------------------------------------
# The pair-compacted dataflow, on a kernel map's own arrays (``jsparse3d.ops.KernelMap``: pairs in blocks of
# ``pairs_per_block`` that share one offset, padding pairs holding a row past every array).

DATAFLOWS = ("output_stationary", "pairs")
DATAFLOW_ENV = "JSPARSE3D_PALLAS_DATAFLOW"


def dataflow(dtype, c_in: int, c_out: int) -> str:
  """Which dataflow a convolution of these channels and dtype runs with: ``$JSPARSE3D_PALLAS_DATAFLOW`` if set
  (``output_stationary`` or ``pairs``, for every layer), else the tuning file's choice for this GPU (``python -m
  pallas_kernels.gpu_check --steps autotune`` times both), else ``"output_stationary"``. It is read when a
  convolution is traced: set the variable before the process's first convolution."""
  forced = os.environ.get(DATAFLOW_ENV)
  if forced:
    if forced not in DATAFLOWS:
      raise ValueError(f"{DATAFLOW_ENV}={forced!r}: expected one of {DATAFLOWS}; unset it for the default.")
    return forced
  tuned = _tuning.lookup("conv_dataflow", dtype, c_in, c_out)
  return tuned["dataflow"] if tuned else "output_stationary"


def _check_pairs(src, dst, block_offset, num_blocks, pairs_per_block, what):
  if src.shape != dst.shape or src.ndim != 1 or src.dtype != jnp.int32 or dst.dtype != jnp.int32:
    raise ValueError(f"{what}: src and dst must be int32 [P] pair rows, got {src.dtype} {src.shape} and "
                     f"{dst.dtype} {dst.shape}.")
  if pairs_per_block < 16 or pairs_per_block & (pairs_per_block - 1) or src.shape[0] % pairs_per_block:
    raise ValueError(f"{what}: pairs_per_block must be a power of two >= 16 dividing the {src.shape[0]} pairs, "
                     f"got {pairs_per_block}.")
  if block_offset.shape != (src.shape[0] // pairs_per_block,):
    raise ValueError(f"{what}: block_offset must be int32 [{src.shape[0] // pairs_per_block}] (one offset per "
                     f"block), got {block_offset.shape}.")
  return jnp.reshape(jnp.asarray(num_blocks, jnp.int32), (1,))


def pairs_forward(x, w, src, dst, block_offset, num_blocks, center_mask=None, *, num_out: int,
                  pairs_per_block: int, center: int = -1, mirrored: bool = False,
                  block_sizes: BlockSizes | None = None, interpret: bool | None = None, allow_tf32: bool = True):
  """``[num_out, C_out]`` in ``x``'s dtype: ``out[dst[p]] += x[src[p]] @ w[offset of p]`` over the real pairs.

  Multiplies real pairs only (one GEMM tile per block of same-offset pairs, into a ``[P, C_out]`` float32
  buffer), then sums each output row's products in offset order: the same sums as :func:`conv_forward` on the
  map's neighbour table, without its multiplications by missing neighbours. ``mirrored``: every pair also stands
  for ``(dst, src, K - 1 - offset)``; ``center >= 0``: rows with ``center_mask`` meet themselves at that offset.
  x: [N_in, C_in]; w: [K, C_in, C_out]; src, dst: int32 [P]; block_offset: int32 [P / pairs_per_block];
  num_blocks: int32 scalar (blocks in use).
  """
  _check_features(x, "pairs_forward")
  nb = _check_pairs(src, dst, block_offset, num_blocks, pairs_per_block, "pairs_forward")
  if w.ndim != 3 or w.shape[1] != x.shape[1] or w.dtype != x.dtype:
    raise ValueError(f"pairs_forward: w must be [K, C_in={x.shape[1]}, C_out] in {x.dtype}, got {w.dtype} "
                     f"{w.shape}.")
  k, c_in, c_out = w.shape
  bs = block_sizes or BlockSizes.choose("conv_pairs", x.dtype, c_in, c_out)
  bk, bn, cin_p, cout_p = _tiles(bs, c_in, c_out)
  bm = min(bs.rows, pairs_per_block)
  xp = _config.pad(x, 1, cin_p)
  wp = _config.pad(_config.pad(w, 1, cin_p), 2, cout_p)
  launch = dict(pairs_per_block=pairs_per_block, bm=bm, bn=bn, bk=bk, num_warps=bs.num_warps,
                num_stages=bs.num_stages, interpret=interpret, allow_tf32=allow_tf32)
  p = src.shape[0]
  if p == 0:  # no pairs besides the centre (a 1 x 1 x 1 kernel)
    out = jnp.zeros((num_out, c_out), jnp.float32)
  else:
    live = jnp.arange(block_offset.shape[0], dtype=jnp.int32) < nb[0]
    slot = jnp.repeat(jnp.where(live, block_offset, k), pairs_per_block)  # column k: dropped
    ids = jnp.arange(p, dtype=jnp.int32)
    table = jnp.full((num_out, k), -1, jnp.int32).at[dst, slot].set(ids, mode="drop")
    products = [kernel.pair_products(xp, wp, src, block_offset, nb, **launch)]
    if mirrored:
      table = table.at[src, jnp.where(slot < k, k - 1 - slot, k)].set(ids + p, mode="drop")
      products.append(kernel.pair_products(xp, wp, dst, k - 1 - block_offset, nb, **launch))
    out = kernel.gather_sum(jnp.concatenate(products), _table(table, bs.rows), dtype=jnp.float32, bm=bs.rows,
                            bn=bn, num_warps=bs.num_warps, num_stages=bs.num_stages,
                            interpret=interpret)[:num_out, :c_out]
  if center >= 0:  # the centre's identity pairs: one dense product on the masked rows
    precision = None if allow_tf32 else jax.lax.Precision.HIGHEST
    out = out + jnp.where(center_mask[:, None], jnp.dot(x, w[center], precision=precision,
                                                        preferred_element_type=jnp.float32), 0.0)
  return out.astype(x.dtype)


def pairs_wgrad(x, dy, src, dst, block_offset, num_blocks, center_mask=None, *, num_offsets: int,
                pairs_per_block: int, center: int = -1, mirrored: bool = False,
                block_sizes: BlockSizes | None = None, interpret: bool | None = None, allow_tf32: bool = True):
  """``[K, C_in, C_out]`` float32: ``dw[offset of p] += x[src[p]]^T @ dy[dst[p]]`` over the real pairs (and their
  mirrors and the centre, as in :func:`pairs_forward`). One partial per block of pairs, then the blocks of each
  offset added by a 0/1 matrix product: no atomics, the same result on every run.
  x: [N_src, C_in]; dy: [N_dst, C_out] (x's dtype)."""
  _check_features(x, "pairs_wgrad")
  nb = _check_pairs(src, dst, block_offset, num_blocks, pairs_per_block, "pairs_wgrad")
  if dy.ndim != 2 or dy.dtype != x.dtype:
    raise ValueError(f"pairs_wgrad: dy must be [N_dst, C_out] in {x.dtype}, got {dy.dtype} {dy.shape}.")
  k, (c_in, c_out) = num_offsets, (x.shape[1], dy.shape[1])
  bs = block_sizes or BlockSizes.choose("conv_pairs_wgrad", x.dtype, c_in, c_out)
  bk, bn, cin_p, cout_p = _tiles(bs, c_in, c_out)
  launch = dict(pairs_per_block=pairs_per_block, bm=min(bs.rows, pairs_per_block), bn=bn, bk=bk,
                num_warps=bs.num_warps, num_stages=bs.num_stages, interpret=interpret, allow_tf32=allow_tf32)
  xp, dyp = _config.pad(x, 1, cin_p), _config.pad(dy, 1, cout_p)
  live = jnp.arange(block_offset.shape[0], dtype=jnp.int32) < nb[0]
  offsets = jnp.arange(k, dtype=jnp.int32)
  exact = jax.lax.Precision.HIGHEST

  def by_offset(block_offsets, parts):  # dw[o] = sum of the partials of o's blocks (0/1 weights: exact adds)
    onehot = ((block_offsets[:, None] == offsets[None, :]) & live[:, None]).astype(jnp.float32)
    return jnp.einsum("bk,bcd->kcd", onehot, parts, precision=exact)

  if src.shape[0] == 0:  # no pairs besides the centre (a 1 x 1 x 1 kernel)
    dw = jnp.zeros((k, c_in, c_out), jnp.float32)
  else:
    dw = by_offset(block_offset, kernel.pair_wgrad_partials(xp, dyp, src, dst, nb, **launch))
    if mirrored:
      dw = dw + by_offset(k - 1 - block_offset, kernel.pair_wgrad_partials(xp, dyp, dst, src, nb, **launch))
    dw = dw[:, :c_in, :c_out]
  if center >= 0:  # the centre's identity pairs: x^T @ dy on the masked rows
    precision = None if allow_tf32 else exact
    dw = dw.at[center].add(jnp.dot(x.T, jnp.where(center_mask[:, None], dy, 0), precision=precision,
                                   preferred_element_type=jnp.float32))
  return dw
