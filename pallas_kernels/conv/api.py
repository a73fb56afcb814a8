"""Sparse convolution on GPU with Pallas: validation, padding and block sizes around :mod:`.kernel`.

``conv_forward(x, w, nbr)`` computes ``out[d] = sum_k x[nbr[d, k]] @ w[k]`` (the forward of a convolution, or its
input gradient when given the transposed table and ``w[k].T``); ``conv_wgrad(x, dy, nbr)`` computes
``dw[k] = sum_d x[nbr[d, k]]^T @ dy[d]``. Both accumulate in float32 and take float32, bfloat16 or float16.
"""

from __future__ import annotations

import dataclasses

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


def _check(x, nbr, what):
  if x.ndim != 2:
    raise ValueError(f"{what}: x must be [N, C], got {x.shape}.")
  if jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in DTYPES]:
    raise TypeError(f"{what}: features must be float32, bfloat16 or float16, got {x.dtype}; cast them first.")
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
