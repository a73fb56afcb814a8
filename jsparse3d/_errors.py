"""Data-dependent failures as flags, raised at the API boundary.

Static problems (shapes, dtypes, kernel sizes) raise at once. Problems that depend on values, such as a capacity
overflow or coordinates out of range inside ``jax.jit``, cannot raise there. Such ops set a bit in the ``errors``
scalar that every :class:`~jsparse3d.SparseTensor` and hash index carries, and bits propagate to every tensor
derived from a flagged one. When the values are concrete (eager mode), the op raises immediately; under ``jit``,
call :func:`raise_if_error` on the outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CAPACITY_OVERFLOW = 1
OUT_OF_RANGE = 2
DUPLICATE_COORDS = 4
COORDS_MISMATCH = 8
TABLE_FULL = 16

_MESSAGES = {
    CAPACITY_OVERFLOW: (
        "capacity overflow: an op produced more rows than the tensor's capacity, so its result is incomplete. "
        "Pass a larger `capacity=` to the op (or to SparseTensor.from_coords)."),
    OUT_OF_RANGE: (
        "coordinates out of range: a batch index is outside 0..1023 or a spatial coordinate is outside "
        "-131072..131071. Shift or crop the coordinates into that range before building the tensor."),
    DUPLICATE_COORDS: (
        "duplicate coordinates: the same (batch, x, y, z) appears in more than one valid row. Build tensors "
        "with SparseTensor.from_coords(..., duplicates='sum' | 'mean') to merge duplicates."),
    COORDS_MISMATCH: (
        "coordinate mismatch: tensors combined row by row (cat, add) do not hold the same coordinates. Combine "
        "only tensors that share coordinates, e.g. a skip connection and the transposed conv that returns to it."),
    TABLE_FULL: (
        "hash table full: a GPU hash-table insert or probe ran past its step limit, so some coordinates may be "
        "missing from the index. This should not happen at the table's 2x load; please report it with the input."),
}


class Flagged:
  """Marker base of the pytrees that carry an ``errors`` flag word (SparseTensor, HashIndex)."""

  errors: jax.Array


def no_errors() -> jnp.ndarray:
  """The ``int32[]`` flag word with no bits set."""
  return jnp.zeros((), jnp.int32)


def flag(condition: jnp.ndarray, bit: int) -> jnp.ndarray:
  """``int32[]``: ``bit`` if ``condition`` holds, else 0."""
  return jnp.where(condition, jnp.int32(bit), jnp.int32(0))


def describe(bits: int) -> list[str]:
  """Human-readable messages for every bit set in ``bits``."""
  return [msg for bit, msg in _MESSAGES.items() if bits & bit]


def _raise(bits: int, where: str) -> None:
  if bits:
    raise ValueError(f"{where}: " + " | ".join(describe(bits)))


def check_now(errors: jnp.ndarray, where: str) -> None:
  """Raises at once if ``errors`` is concrete and non-zero; a no-op while tracing."""
  if isinstance(errors, jax.core.Tracer):
    return
  _raise(int(np.bitwise_or.reduce(np.asarray(errors).reshape(-1), initial=0)), where)


def raise_if_error(tree) -> None:
  """Raises ``ValueError`` if any jsparse3d object in ``tree`` carries an error flag.

  Call this on the outputs of a jitted function: flags raised inside ``jit`` travel with the tensors.

  Example:
    >>> w = jax.random.normal(key, (3, 3, 3, 32, 32)) * 0.05
    >>> y = jax.jit(lambda x: jsparse3d.ops.conv3d(x, w))(x)
    >>> jsparse3d.raise_if_error(y)   # silent: no flag
  """
  bits = 0
  is_flagged = lambda x: isinstance(x, Flagged)
  for node in jax.tree_util.tree_leaves(tree, is_leaf=is_flagged):
    if is_flagged(node):
      bits |= int(np.bitwise_or.reduce(np.asarray(node.errors).reshape(-1), initial=0))
  _raise(bits, "jsparse3d")
