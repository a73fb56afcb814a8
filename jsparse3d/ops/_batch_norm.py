"""Batch normalization over the valid rows of a feature matrix, with an optional ReLU, in one op.

``batch_norm(x, mask, scale, bias)`` returns ``y = mask ? act((x - mean) / sqrt(var + eps) * scale + bias) : 0``
with the mean and biased variance of the valid rows, and those statistics. Written as plain ``jnp``, XLA's
autodiff of it is a few dozen small HLO ops per layer, forward and backward, for every one of the 45 batch norms
of a U-ResNet (a third of its compile time and of its training step on a CPU). Here it is three pieces:

- the forward (``implementation="native"``: one FFI call, two passes over the rows; ``"xla"``: the same sums in
  ``jnp``), inside a ``jax.custom_jvp``;
- ``norm_jvp_p``, its tangent: linear in ``(dx, dscale, dbias)``, always lowered to XLA (forward mode only);
- ``norm_vjp_p``, the transpose of ``norm_jvp_p``: the input, scale and bias gradients from the saved input and
  statistics (native: one FFI call, two passes). The ReLU's gate is recomputed rather than read from a saved
  output, so a layer keeps one ``[N, C]`` array for its gradient, as XLA's autodiff of the ``jnp`` form did.

``jax.grad`` runs the forward and ``norm_vjp_p``. Higher derivatives differentiate the two primitives through
their ``jnp`` definitions below, so ``jvp``, Hessian-vector products and ``vmap`` all work. Statistics are float32
(float64 for float64 inputs); the native kernels sum in a fixed order of row blocks, so results do not depend on
the thread count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive

# The primitive-rule modules, as in _conv_primitive.py (no public replacement in jax 0.10-0.11).
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir

from jsparse3d.ops import _backend
from jsparse3d.ops import _native
from jsparse3d.ops._conv_primitive import sequential_batch_rule


def batch_norm(x, mask, scale, bias, *, epsilon: float = 1e-5, relu: bool = False,
               implementation: str | None = None):
  """Training-mode batch norm of the valid rows of ``x``, optionally followed by a ReLU.

  Args:
    x: ``[N, C]`` features. mask: ``bool[N]``, True on valid rows. scale, bias: ``[C]``.
    epsilon: added to the variance. relu: apply ``max(., 0)`` in the same pass.
    implementation: ``"native"`` (CPU), ``"xla"`` or None (native where it builds).
  Returns:
    ``(y, mean, var)``: ``y`` ``[N, C]`` in the statistics dtype (float32, or float64 for float64 ``x``), zero on
    padded rows; ``mean`` and ``var`` ``[C]``, the statistics of the valid rows (zeros if there are none).

  Example:
    >>> from jsparse3d.ops._batch_norm import batch_norm
    >>> y, mean, var = batch_norm(x.feats, x.valid_mask, jnp.ones(32), jnp.zeros(32), relu=True)
    >>> bool(jnp.all(y[~x.valid_mask] == 0)) and bool(jnp.all(y >= 0))
    True
  """
  dtype = _stat_dtype(x.dtype)
  implementation = _backend.resolve("batch_norm", implementation, x.dtype)
  return _norm(x.astype(dtype), mask, scale.astype(dtype), bias.astype(dtype), float(epsilon), bool(relu),
               implementation)


def _stat_dtype(dtype):
  return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


# --------------------------------------------------------------------------------------------------------------
# The definitions in jnp: the XLA implementation, and what higher derivatives differentiate.


def _count(mask, dtype):
  return jnp.maximum(jnp.sum(mask).astype(dtype), 1)  # no valid rows: zero statistics, not NaN


def _valid_sum(mask, v):
  return jnp.sum(jnp.where(mask[:, None], v, 0), axis=0)


def _forward_ref(x, mask, scale, bias, *, epsilon, relu):
  count = _count(mask, x.dtype)
  mean = _valid_sum(mask, x) / count
  var = jnp.maximum(_valid_sum(mask, x * x) / count - mean * mean, 0)
  z = _affine(x, scale, bias, mean, var, epsilon)
  y = jnp.where(mask[:, None], jnp.maximum(z, 0) if relu else z, 0)
  return y, mean, var


def _affine(x, scale, bias, mean, var, epsilon):
  a = lax.rsqrt(var + epsilon) * scale
  return x * a[None] + (bias - mean * a)[None]


def _gate(x, mask, scale, bias, mean, var, epsilon, relu):
  """Where the cotangent passes: valid rows, and under the ReLU where the forward's ``x * a + b`` was positive
  (recomputed with the forward's arithmetic, so that the output ``y`` need not be saved for the gradient)."""
  if not relu:
    return mask[:, None]
  return mask[:, None] & (_affine(x, scale, bias, mean, var, epsilon) > 0)


def _jvp_ref(dx, dscale, dbias, x, mask, scale, bias, mean, var, *, epsilon, relu):
  """The tangent of ``y``: gate * (scale * inv * (dx - mean(dx) - xhat * mean(xhat * dx)) + xhat * dscale + dbias)
  with means over the valid rows and ``xhat = (x - mean) * inv``."""
  count = _count(mask, x.dtype)
  inv = lax.rsqrt(var + epsilon)
  xhat = (x - mean[None]) * inv[None]
  centred = dx - (_valid_sum(mask, dx) / count)[None] - xhat * (_valid_sum(mask, xhat * dx) / count)[None]
  gate = _gate(x, mask, scale, bias, mean, var, epsilon, relu)
  return jnp.where(gate, (scale * inv)[None] * centred + xhat * dscale[None] + dbias[None], 0)


def _vjp_ref(dy, x, mask, scale, bias, mean, var, *, epsilon, relu):
  """The transpose of :func:`_jvp_ref`: ``(dx, dscale, dbias)`` for a cotangent ``dy`` of ``y``."""
  count = _count(mask, x.dtype)
  inv = lax.rsqrt(var + epsilon)
  xhat = (x - mean[None]) * inv[None]
  g = jnp.where(_gate(x, mask, scale, bias, mean, var, epsilon, relu), dy, 0)
  dbias = jnp.sum(g, axis=0)
  dscale = jnp.sum(g * xhat, axis=0)
  centred = g - (dbias / count)[None] - xhat * (dscale / count)[None]
  dx = jnp.where(mask[:, None], (scale * inv)[None] * centred, 0)
  return dx, dscale, dbias


# --------------------------------------------------------------------------------------------------------------
# The forward and the two primitives.


def _native_call(name, shapes, *args, epsilon, relu):
  outs = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)
  return jax.ffi.ffi_call(_native.target(name), outs, vmap_method="sequential")(
      *args, epsilon=np.float32(epsilon), relu=np.int64(relu))


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6))
def _norm(x, mask, scale, bias, epsilon, relu, implementation):
  if implementation == "native":
    n, c = x.shape
    return _native_call("norm", ((n, c), (c,), (c,)), x, mask, scale, bias, epsilon=epsilon, relu=relu)
  return _forward_ref(x, mask, scale, bias, epsilon=epsilon, relu=relu)


@_norm.defjvp
def _norm_jvp(epsilon, relu, implementation, primals, tangents):
  x, mask, scale, bias = primals
  dx, _, dscale, dbias = tangents
  y, mean, var = _norm(x, mask, scale, bias, epsilon, relu, implementation)
  dy = norm_jvp_p.bind(dx, dscale, dbias, x, mask, scale, bias, mean, var, epsilon=epsilon, relu=relu,
                       implementation=implementation)
  count = _count(mask, x.dtype)  # the statistics' own tangents: second derivatives need them
  dmean = _valid_sum(mask, dx) / count
  dvar = 2 * _valid_sum(mask, (x - mean[None]) * dx) / count
  return (y, mean, var), (dy, dmean, dvar)


norm_jvp_p = Primitive("jsparse3d_batch_norm_jvp")
norm_vjp_p = Primitive("jsparse3d_batch_norm_vjp")
norm_vjp_p.multiple_results = True


def _norm_vjp_impl(dy, x, mask, scale, bias, mean, var, *, epsilon, relu, implementation):
  if implementation == "native":
    n, c = x.shape
    return _native_call("norm_vjp", ((n, c), (c,), (c,)), dy.astype(jnp.float32), x, mask, scale, bias, mean, var,
                        epsilon=epsilon, relu=relu)
  return _vjp_ref(dy, x, mask, scale, bias, mean, var, epsilon=epsilon, relu=relu)


def _norm_jvp_impl(*args, epsilon, relu, implementation):
  del implementation  # forward mode only: XLA
  return _jvp_ref(*args, epsilon=epsilon, relu=relu)


_STATIC = ("epsilon", "relu", "implementation")
norm_jvp_p.def_impl(jax.jit(_norm_jvp_impl, static_argnames=_STATIC))
norm_vjp_p.def_impl(jax.jit(_norm_vjp_impl, static_argnames=_STATIC))
mlir.register_lowering(norm_jvp_p, mlir.lower_fun(_norm_jvp_impl, multiple_results=False))
mlir.register_lowering(norm_vjp_p, mlir.lower_fun(_norm_vjp_impl, multiple_results=True))


@norm_jvp_p.def_abstract_eval
def _jvp_abstract(dx, *_, **__):
  return jax.core.ShapedArray(dx.shape, dx.dtype)


@norm_vjp_p.def_abstract_eval
def _vjp_abstract(dy, x, mask, scale, *_, **__):
  return [jax.core.ShapedArray(x.shape, x.dtype), jax.core.ShapedArray(scale.shape, scale.dtype),
          jax.core.ShapedArray(scale.shape, scale.dtype)]


def _jvp_transpose(ct, dx, dscale, dbias, x, mask, scale, bias, mean, var, **params):
  if type(ct) is ad.Zero:
    return [None] * 9
  bars = norm_vjp_p.bind(ct, x, mask, scale, bias, mean, var, **params)
  return [b if ad.is_undefined_primal(v) else None for b, v in zip(bars, (dx, dscale, dbias))] + [None] * 6


ad.primitive_transposes[norm_jvp_p] = _jvp_transpose


def _jvp_by_definition(definition, multiple_results, primals, tangents, *, epsilon, relu, implementation):
  """Differentiates a primitive through its jnp definition (second and higher derivatives)."""
  del implementation
  tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
  out, out_dot = jax.jvp(functools.partial(definition, epsilon=epsilon, relu=relu), tuple(primals), tangents)
  return (list(out), list(out_dot)) if multiple_results else (out, out_dot)


ad.primitive_jvps[norm_jvp_p] = functools.partial(_jvp_by_definition, _jvp_ref, False)
ad.primitive_jvps[norm_vjp_p] = functools.partial(_jvp_by_definition, _vjp_ref, True)


batching.primitive_batchers[norm_jvp_p] = functools.partial(sequential_batch_rule, norm_jvp_p)
batching.primitive_batchers[norm_vjp_p] = functools.partial(sequential_batch_rule, norm_vjp_p)
