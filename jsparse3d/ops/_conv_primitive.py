"""The two primitives behind sparse convolution, with rules for every JAX transformation.

``conv``:  ``out[d] += x[s] @ W[o]`` over the pairs ``(s, d, o)`` of a kernel map (``W[o].T`` if ``wt``).
``wgrad``: ``W[o] += a[s].T @ b[d]`` over the same pairs.

Both are bilinear, so forward mode is the sum of the two partial products, and each is the transpose of the
other: the input gradient of ``conv`` is ``conv`` over the *transposed* map with ``W[o].T`` (a gather-GEMM like
the forward, not the scatter of a gather), and its weight gradient is ``wgrad``. ``jax.grad``, ``jax.jvp``,
Hessian-vector products, ``vmap``, ``jit``, ``pmap`` and ``checkpoint`` all follow from these rules.

The XLA lowering runs a loop over the map's offset-homogeneous blocks with a dynamic trip count, so only real
pairs cost work. It gathers a block's rows, multiplies them by that offset's weight slice (accumulating in
float32, or float64 for float64 inputs), and adds the result into the destination rows. Within a block the
destination rows are distinct, and blocks run in a fixed order, so every result is bitwise reproducible.

The native lowering (``implementation="native"``, CPU only, float32 arithmetic) calls the kernels of
``_cpu_kernels.cc`` through XLA's FFI instead; they compute the same sums on all intra-op threads, also in an
order fixed by the map. The Pallas lowering (``implementation="pallas"``, the default on GPU) reads the map as its
output-stationary neighbour table (the one the map carries, see ``KernelMap.with_tables``, else built from the
pairs) and runs the fused gather-GEMM kernels of :mod:`pallas_kernels.conv`, or
(where ``pallas_kernels.conv.api.dataflow`` says so) runs the pair-compacted kernels on the map's pairs.
Both primitives carry the implementation as a parameter, so gradients, forward mode and batching use the same
one as the call they come from.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive

# Defining a primitive's differentiation, batching and lowering rules: the API of JAX's "How primitives work"
# guide; jax.extend offers no public replacement for these three modules in jax 0.10-0.11 (nor for
# jax.core.ShapedArray, the abstract value the shape rules return).
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir

from jsparse3d.ops import _backend
from jsparse3d.ops import _kernel_map
from jsparse3d.ops import _native
from jsparse3d.ops._kernel_map import KernelMap

conv_p = Primitive("jsparse3d_sparse_conv")
wgrad_p = Primitive("jsparse3d_sparse_conv_wgrad")

# Operands after the two bilinear ones: (src, dst, block_offset, num_blocks, center_mask, table, table_t); the
# two neighbour tables are int32[0, K] where the map does not carry them (only the Pallas lowering reads them).
_NUM_MAP_OPERANDS = 7


def map_operands(kmap: KernelMap):
  none = jnp.zeros((0, kmap.num_offsets), jnp.int32)
  tables = [none if t is None else t for t in (kmap.table, kmap.table_t)]
  return kmap.src, kmap.dst, kmap.block_offset, kmap.num_blocks, kmap.center_mask, *tables


def map_params(kmap: KernelMap) -> dict:
  return dict(block_size=kmap.block_size, blocks_per_step=kmap.blocks_per_step, center=kmap.center,
              mirrored=kmap.mirrored)


def conv(x, w, kmap: KernelMap, *, wt: bool = False, implementation: str = "xla"):
  """``[num_dst, C_out]`` = sum over the pairs of ``x[src] @ w[o]`` (``w[o].T`` if ``wt``).

  Args:
    x: ``[num_src, C_in]`` features. w: ``[K, C_in, C_out]`` (``[K, C_out, C_in]`` if ``wt``), same dtype.
    implementation: ``"xla"`` or ``"native"`` (CPU, float32 arithmetic; resolved by the caller).
  """
  return conv_p.bind(x, w, *map_operands(kmap), num_dst=kmap.num_dst, wt=wt, implementation=implementation,
                     **map_params(kmap))


# --------------------------------------------------------------------------------------------------------------
# XLA implementation.


def _steps(body_fn, init, src, dst, block_offset, num_blocks, *, block_size, blocks_per_step):
  """Runs ``body_fn(carry, s, d, o)`` over the blocks in use, ``blocks_per_step`` at a time.

  ``s`` and ``d`` are ``int32[blocks_per_step, block_size]`` pair rows, ``o`` the ``int32[blocks_per_step]``
  offsets. Blocks past ``num_blocks`` in the last step hold sentinel pairs only.
  """
  if src.shape[0] == 0:  # only the centre offset (a 1x1x1 kernel)
    return init
  span = block_size * blocks_per_step

  def body(i, carry):
    s = lax.dynamic_slice_in_dim(src, i * span, span).reshape(blocks_per_step, block_size)
    d = lax.dynamic_slice_in_dim(dst, i * span, span).reshape(blocks_per_step, block_size)
    o = lax.dynamic_slice_in_dim(block_offset, i * blocks_per_step, blocks_per_step)
    return body_fn(carry, s, d, o)

  return lax.fori_loop(0, (num_blocks + blocks_per_step - 1) // blocks_per_step, body, init)


def _gather(x, rows):
  return x.at[rows].get(mode="fill", fill_value=0, indices_are_sorted=False)


def _acc_dtype(*dtypes):
  """float32 accumulation for float32 and narrower inputs; float64 stays float64."""
  widest = max((jnp.dtype(getattr(d, "dtype", d)) for d in dtypes), key=lambda d: d.itemsize)
  return jnp.float64 if widest == jnp.float64 else jnp.float32


def _dot(a, b, a_axis, b_axis, batch=False):
  dims = (((a_axis,), (b_axis,)), (((0,), (0,)) if batch else ((), ())))
  return lax.dot_general(a, b, dims, preferred_element_type=_acc_dtype(a, b))


def _table(table, src, dst, block_offset, num_blocks, center_mask, *, num_dst, num_offsets, block_size, center,
           mirrored):
  """The map's neighbour table: the one it carries (``table``), else built from its pairs."""
  if table.shape == (num_dst, num_offsets):
    return table
  return _kernel_map.neighbor_table(src, dst, block_offset, num_blocks, center_mask, num_dst=num_dst,
                                    num_offsets=num_offsets, block_size=block_size, center=center, mirrored=mirrored)


def _conv_impl(x, w, src, dst, block_offset, num_blocks, center_mask, table, table_t, *, num_dst, wt, implementation,
               block_size, blocks_per_step, center, mirrored):
  del table_t  # the transposed map's table: for the gradients, which bind this primitive on the swapped map
  if implementation == "pallas":
    kernels, w = _backend.pallas("conv"), (jnp.swapaxes(w, 1, 2) if wt else w).astype(x.dtype)
    if kernels.dataflow(x.dtype, w.shape[1], w.shape[2]) == "pairs":
      return kernels.pairs_forward(x, w, src, dst, block_offset, num_blocks, center_mask, num_out=num_dst,
                                   pairs_per_block=block_size, center=center, mirrored=mirrored)
    table = _table(table, src, dst, block_offset, num_blocks, center_mask, num_dst=num_dst,
                   num_offsets=w.shape[0], block_size=block_size, center=center, mirrored=mirrored)
    return kernels.conv_forward(x, w, table)
  if implementation == "native":  # with ``wt`` the kernel reads w[o].T itself: no transposed copy per layer
    c_out = w.shape[1] if wt else w.shape[2]
    out = jax.ffi.ffi_call(_native.target("conv_wt" if wt else "conv"),
                           jax.ShapeDtypeStruct((num_dst, c_out), jnp.float32))(
        x.astype(jnp.float32), w.astype(jnp.float32), src, dst, block_offset, num_blocks, center_mask,
        **_native_attrs(block_size, center, mirrored))
    return out.astype(x.dtype)
  k = w.shape[0]
  c_out = w.shape[1] if wt else w.shape[2]
  w_in_axis = 2 if wt else 1  # the C_in axis of w
  out = jnp.zeros((num_dst, c_out), _acc_dtype(x, w))
  if center >= 0:
    out = jnp.where(center_mask[:, None], _dot(x, w[center], 1, w_in_axis - 1), 0.0)

  def add(out, s, d, o):  # out[d] += x[s] @ w[o], for a step of blocks
    y = _dot(_gather(x, s), w[o], 2, w_in_axis, batch=True)
    return out.at[d.reshape(-1)].add(y.reshape(-1, c_out), mode="drop")

  def body(out, s, d, o):
    out = add(out, s, d, o)
    return add(out, d, s, k - 1 - o) if mirrored else out

  out = _steps(body, out, src, dst, block_offset, num_blocks, block_size=block_size,
               blocks_per_step=blocks_per_step)
  return out.astype(x.dtype)


def _wgrad_impl(a, b, src, dst, block_offset, num_blocks, center_mask, table, table_t, *, num_offsets, out_dtype,
                implementation, block_size, blocks_per_step, center, mirrored):
  del table_t
  if implementation == "pallas":
    kernels, b = _backend.pallas("conv"), b.astype(a.dtype)
    if kernels.dataflow(a.dtype, a.shape[1], b.shape[1]) == "pairs":
      return kernels.pairs_wgrad(a, b, src, dst, block_offset, num_blocks, center_mask, num_offsets=num_offsets,
                                 pairs_per_block=block_size, center=center, mirrored=mirrored).astype(out_dtype)
    table = _table(table, src, dst, block_offset, num_blocks, center_mask, num_dst=b.shape[0],
                   num_offsets=num_offsets, block_size=block_size, center=center, mirrored=mirrored)
    return kernels.conv_wgrad(a, b, table).astype(out_dtype)
  if implementation == "native":
    shape = jax.ShapeDtypeStruct((num_offsets, a.shape[1], b.shape[1]), jnp.float32)
    grad = jax.ffi.ffi_call(_native.target("wgrad"), shape)(
        a.astype(jnp.float32), b.astype(jnp.float32), src, dst, block_offset, num_blocks, center_mask,
        **_native_attrs(block_size, center, mirrored))
    return grad.astype(out_dtype)
  grad = jnp.zeros((num_offsets, a.shape[1], b.shape[1]), _acc_dtype(a, b))
  if center >= 0:
    bm = jnp.where(center_mask[:, None], b, jnp.zeros((), b.dtype))
    grad = grad.at[center].set(_dot(a, bm, 0, 0))

  def add(grad, s, d, o):  # grad[o] += a[s].T @ b[d], for a step of blocks
    return grad.at[o].add(_dot(_gather(a, s), _gather(b, d), 1, 1, batch=True))

  def body(grad, s, d, o):
    grad = add(grad, s, d, o)
    return add(grad, d, s, num_offsets - 1 - o) if mirrored else grad

  grad = _steps(body, grad, src, dst, block_offset, num_blocks, block_size=block_size,
                blocks_per_step=blocks_per_step)
  return grad.astype(out_dtype)


def _native_attrs(block_size, center, mirrored):
  return dict(block_size=np.int64(block_size), center=np.int64(center), mirrored=np.int64(mirrored))


_MAP_PARAMS = ("implementation", "block_size", "blocks_per_step", "center", "mirrored")
_conv_jit = jax.jit(_conv_impl, static_argnames=("num_dst", "wt") + _MAP_PARAMS)
_wgrad_jit = jax.jit(_wgrad_impl, static_argnames=("num_offsets", "out_dtype") + _MAP_PARAMS)

conv_p.def_impl(_conv_jit)
wgrad_p.def_impl(_wgrad_jit)
mlir.register_lowering(conv_p, mlir.lower_fun(_conv_impl, multiple_results=False))
mlir.register_lowering(wgrad_p, mlir.lower_fun(_wgrad_impl, multiple_results=False))


@conv_p.def_abstract_eval
def _conv_abstract(x, w, *maps, num_dst, wt, **_):
  return jax.core.ShapedArray((num_dst, w.shape[1] if wt else w.shape[2]), x.dtype)


@wgrad_p.def_abstract_eval
def _wgrad_abstract(a, b, *maps, num_offsets, out_dtype, **_):
  return jax.core.ShapedArray((num_offsets, a.shape[1], b.shape[1]), out_dtype)


# --------------------------------------------------------------------------------------------------------------
# Differentiation: both primitives are bilinear.


def _swap(maps):
  """The transposed map's operands: source and destination rows swapped, and the two tables."""
  src, dst, block_offset, num_blocks, center_mask, table, table_t = maps
  return (dst, src, block_offset, num_blocks, center_mask, table_t, table)


ad.defjvp(conv_p,
          lambda g, x, w, *maps, **p: conv_p.bind(g, w, *maps, **p),
          lambda g, x, w, *maps, **p: conv_p.bind(x, g, *maps, **p),
          *([None] * _NUM_MAP_OPERANDS))
ad.defjvp(wgrad_p,
          lambda g, a, b, *maps, **p: wgrad_p.bind(g, b, *maps, **p),
          lambda g, a, b, *maps, **p: wgrad_p.bind(a, g, *maps, **p),
          *([None] * _NUM_MAP_OPERANDS))


def _aval(v):
  return v.aval if ad.is_undefined_primal(v) else jax.typeof(v)


def _conv_transpose(ct, x, w, *maps, num_dst, wt, **params):
  if type(ct) is ad.Zero:
    return [None] * (2 + _NUM_MAP_OPERANDS)
  x_bar = w_bar = None
  if ad.is_undefined_primal(x):
    x_bar = conv_p.bind(ct, w, *_swap(maps), num_dst=_aval(x).shape[0], wt=not wt, **params)
  if ad.is_undefined_primal(w):
    k = _aval(w).shape[0]
    if wt:
      w_bar = wgrad_p.bind(ct, x, *_swap(maps), num_offsets=k, out_dtype=_aval(w).dtype, **params)
    else:
      w_bar = wgrad_p.bind(x, ct, *maps, num_offsets=k, out_dtype=_aval(w).dtype, **params)
  return [x_bar, w_bar] + [None] * _NUM_MAP_OPERANDS


def _wgrad_transpose(ct, a, b, *maps, num_offsets, out_dtype, **params):
  if type(ct) is ad.Zero:
    return [None] * (2 + _NUM_MAP_OPERANDS)
  a_bar = b_bar = None
  if ad.is_undefined_primal(a):
    aval = _aval(a)
    a_bar = conv_p.bind(b, ct.astype(aval.dtype), *_swap(maps), num_dst=aval.shape[0], wt=True, **params)
  if ad.is_undefined_primal(b):
    aval = _aval(b)
    b_bar = conv_p.bind(a, ct.astype(aval.dtype), *maps, num_dst=aval.shape[0], wt=False, **params)
  return [a_bar, b_bar] + [None] * _NUM_MAP_OPERANDS


ad.primitive_transposes[conv_p] = _conv_transpose
ad.primitive_transposes[wgrad_p] = _wgrad_transpose


# --------------------------------------------------------------------------------------------------------------
# Batching: a vmapped call runs once per batch element, in order.


def sequential_batch_rule(prim, args, dims, **params):
  """A batching rule that binds ``prim`` once per batch element, in order (``lax.map``); unbatched operands are
  passed whole. Also serves the batch-norm primitives (several results)."""
  mapped = [i for i, d in enumerate(dims) if d is not None]
  moved = [jnp.moveaxis(args[i], dims[i], 0) for i in mapped]

  def one(slices):
    full = list(args)
    for i, v in zip(mapped, slices):
      full[i] = v
    return prim.bind(*full, **params)

  out = lax.map(one, moved)
  return out, ([0] * len(out) if prim.multiple_results else 0)


batching.primitive_batchers[conv_p] = functools.partial(sequential_batch_rule, conv_p)
batching.primitive_batchers[wgrad_p] = functools.partial(sequential_batch_rule, wgrad_p)
