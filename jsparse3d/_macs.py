"""MAC counting over real data: the sparse ops count their work, the traced computation gives the dense work.

Two sources, so no layer carries counting code:

- Work that depends on the data is recorded by the op that does it, from concrete values, while
  :func:`count_macs` runs the model eagerly: a sparse convolution counts its kernel map's real pairs
  (``pairs x C_in x C_out``, the transposed conv those of the map it transposes), a row-wise linear layer its
  valid rows. Such ops run inside :func:`counted_by_op`, which hides their internals from the second source.
- Dense work is read from the model's jaxpr (:func:`jax.make_jaxpr`): every ``dot_general`` and
  ``conv_general_dilated`` counts what its shapes say. A convolution counts every tap of every output, zero
  padding included, as dense hardware does it; a transposed one (input dilation) counts the taps that land on its
  real inputs, not on the zeros the dilation inserts.

The eager record is scoped (a ``contextvars`` variable), so nothing global changes and concurrent counts do not
mix.
"""

from __future__ import annotations

import contextvars
import itertools
import math

import jax
import jax.extend as jex
import numpy as np

_ACTIVE: contextvars.ContextVar[list | None] = contextvars.ContextVar("jsparse3d_macs", default=None)
_SCOPE = "jsparse3d_counted_by_op"


def record(kind: str, macs) -> None:
  """Adds ``macs`` (a concrete number) under ``kind`` if a count is running; a no-op otherwise."""
  tally = _ACTIVE.get()
  if tally is None:
    return
  try:
    tally.append((kind, int(macs)))
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError) as e:
    raise TypeError("count_macs needs concrete kernel maps and row counts: call it eagerly, on a model that does "
                    "not jit its own layers, not under jax.jit.") from e


def counted_by_op():
  """The scope of an op that records its own MACs: the jaxpr count skips what runs inside it."""
  return jax.named_scope(_SCOPE)


def count_macs(model, *args, **kwargs) -> dict:
  """MACs of one forward pass of ``model(*args, **kwargs)`` over real data.

  Sparse convolutions count their kernel maps' real pairs, row-wise layers their valid rows, dense convolutions
  and matmuls their shapes (see the module docstring). The model runs once eagerly (the counts need concrete
  kernel maps) and is traced once; put it in eval mode first if its batch-norm statistics must not move
  (``model.eval()``).

  Args:
    model: a callable, usually an ``nnx.Module``. args, kwargs: its inputs.

  Returns:
    ``{"total": int, "by_kind": {kind: int}}`` with kinds ``"sparse_conv"``, ``"linear"``, ``"dense_conv"``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jsparse3d as js
    >>> x = js.SparseTensor.from_coords(jnp.array([[0, 0, 0, 0], [0, 0, 0, 1]]), jnp.ones((2, 1)))
    >>> js.nn.count_macs(js.nn.SparseConv3d(1, 8, 3, rngs=nnx.Rngs(0)), x)["total"]  # 4 pairs x 1 x 8
    32
  """
  tally = []
  token = _ACTIVE.set(tally)
  try:
    model(*args, **kwargs)
  finally:
    _ACTIVE.reset(token)
  by_kind = {}
  for kind, macs in itertools.chain(tally, _traced_macs(model, args, kwargs)):
    by_kind[kind] = by_kind.get(kind, 0) + macs
  return {"total": sum(by_kind.values()), "by_kind": {k: v for k, v in by_kind.items() if v}}


def _traced_macs(model, args, kwargs):
  from flax import nnx  # noqa: PLC0415 - flax is only needed here, not to import the ops

  if isinstance(model, nnx.Module):  # traced on a copy: a module's state must not take tracers
    graph, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graph, s)(*args, **kwargs))(state)
  else:
    jaxpr = jax.make_jaxpr(lambda: model(*args, **kwargs))()
  return _jaxpr_macs(jaxpr.jaxpr)


def _jaxpr_macs(jaxpr) -> list:
  out = []
  for eqn in jaxpr.eqns:
    # JAX has no public accessor for an equation's scope; `source_info.name_stack` reads the same on 0.10 and 0.11.
    if _SCOPE in str(eqn.source_info.name_stack):
      continue
    name = eqn.primitive.name
    if name == "dot_general":
      out.append(("linear", _dot_macs(eqn)))
    elif name == "conv_general_dilated":
      out.append(("dense_conv", _conv_macs(eqn)))
    inner = [m for sub in jex.core.jaxprs_in_params(eqn.params) for m in _jaxpr_macs(sub)]
    if inner and name in ("cond", "while"):
      raise ValueError(f"count_macs cannot count dense work inside lax.{name} (taken a data-dependent number of "
                       "times); count the branches' modules separately.")
    out += [(kind, macs * eqn.params.get("length", 1) if name == "scan" else macs) for kind, macs in inner]
  return out


def _dot_macs(eqn) -> int:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _conv_macs(eqn) -> int:
  p = eqn.params
  dn = p["dimension_numbers"]
  lhs, rhs, out = (v.aval.shape for v in (*eqn.invars[:2], eqn.outvars[0]))
  cin_per_group, cout = rhs[dn.rhs_spec[1]], rhs[dn.rhs_spec[0]]
  if all(d == 1 for d in p["lhs_dilation"]):
    return math.prod(out) * math.prod(rhs[d] for d in dn.rhs_spec[2:]) * cin_per_group
  taps = 1  # per spatial dimension: (output, tap) pairs that land on a real input, not on a dilation zero
  for i, (lhs_d, rhs_d, out_d) in enumerate(zip(dn.lhs_spec[2:], dn.rhs_spec[2:], dn.out_spec[2:], strict=True)):
    o, t = np.meshgrid(np.arange(out[out_d]), np.arange(rhs[rhs_d]), indexing="ij")
    pos = o * p["window_strides"][i] + t * p["rhs_dilation"][i] - p["padding"][i][0]
    dil = p["lhs_dilation"][i]
    taps *= int(np.sum((pos >= 0) & (pos <= (lhs[lhs_d] - 1) * dil) & (pos % dil == 0)))
  return out[dn.out_spec[0]] * cout * cin_per_group * taps
