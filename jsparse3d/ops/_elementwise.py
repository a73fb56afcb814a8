"""Row-wise feature ops that keep padded rows exactly zero."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jsparse3d import _errors
from jsparse3d._sparse_tensor import SparseTensor


def apply(fn: Callable[[jax.Array], jax.Array], x: SparseTensor) -> SparseTensor:
  """Applies ``fn`` to the features of valid rows; padded rows stay zero.

  Args:
    fn: maps ``[N, C]`` features to ``[N, C']`` features row by row.
    x: input tensor.
  Example:
    >>> y = apply(jax.nn.gelu, x)
  """
  if not isinstance(x, SparseTensor):
    raise TypeError(f"expected a SparseTensor, got {type(x).__name__}.")
  out = fn(x.feats)
  return x.replace(feats=jnp.where(x.valid_mask[:, None], out, jnp.zeros((), out.dtype)))


def relu(x: SparseTensor) -> SparseTensor:
  return apply(jax.nn.relu, x)


def leaky_relu(x: SparseTensor, negative_slope: float = 0.01) -> SparseTensor:
  return apply(lambda f: jax.nn.leaky_relu(f, negative_slope), x)


def gelu(x: SparseTensor) -> SparseTensor:
  return apply(jax.nn.gelu, x)


def silu(x: SparseTensor) -> SparseTensor:
  return apply(jax.nn.silu, x)


def sigmoid(x: SparseTensor) -> SparseTensor:
  return apply(jax.nn.sigmoid, x)


def tanh(x: SparseTensor) -> SparseTensor:
  return apply(jnp.tanh, x)


def _same_geometry(tensors, what: str) -> jax.Array:
  if not tensors or not all(isinstance(t, SparseTensor) for t in tensors):
    raise TypeError(f"{what} expects one or more SparseTensors.")
  first = tensors[0]
  for t in tensors[1:]:
    if t.capacity != first.capacity or t.stride != first.stride:
      raise ValueError(
          f"{what} needs tensors on the same coordinates: got capacity {t.capacity} vs {first.capacity}, stride "
          f"{t.stride} vs {first.stride}. Combine a skip connection with the transposed conv that returns to it.")
    if t.feats.dtype != first.feats.dtype:
      raise TypeError(f"{what} needs one feature dtype, got {t.feats.dtype} and {first.feats.dtype}.")
  errors = first.errors
  for t in tensors[1:]:
    if t.coords is not first.coords:  # the same array object needs no comparison
      differ = jnp.any(t.coords != first.coords) | (t.num_valid != first.num_valid)
      errors = errors | t.errors | _errors.flag(differ, _errors.COORDS_MISMATCH)
  _errors.check_now(errors, what)
  return errors


def cat(tensors, /) -> SparseTensor:
  """Concatenates features of tensors on the same coordinates (e.g. a U-Net skip): ``[N, sum(C_i)]``.

  Coordinates that differ set the ``COORDS_MISMATCH`` flag (raised at once outside ``jit``).
  """
  tensors = list(tensors)
  errors = _same_geometry(tensors, "cat")
  return tensors[0].replace(feats=jnp.concatenate([t.feats for t in tensors], axis=1), errors=errors)


def add(x: SparseTensor, y: SparseTensor) -> SparseTensor:
  """Adds the features of two tensors on the same coordinates (a residual connection)."""
  errors = _same_geometry([x, y], "add")
  if x.feats.shape != y.feats.shape:
    raise ValueError(f"add needs equal feature shapes, got {x.feats.shape} and {y.feats.shape}.")
  return x.replace(feats=x.feats + y.feats, errors=errors)
