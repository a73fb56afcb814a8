"""Adam and AdamW with one native call for the whole parameter update: optax's results and state, a fraction of
the compile time.

XLA compiles optax's Adam as a few elementwise kernels per parameter array, one per distinct shape. For the
U-ResNet's 141 arrays that is about 40% of its training step's compile (2.7 of 6.6 s on a 2-core CPU), paid again
for every batch shape the trainer meets. :func:`fused_adam` computes the same update, element for element in
optax's order of operations, in one FFI call over every array (``_cpu_adam.cc``), and :func:`apply_gradients`
lets a train step write the new parameters in that call too, in place, instead of adding the updates in XLA.

The state is ``optax.adam``'s (``optax.adamw``'s with weight decay) to the leaf, so checkpoints move between the
two, and ``update`` is an optax transformation that chains like any other. Where the native kernels are missing,
off the CPU, or for parameters that are not float32, it runs optax's own update.
"""

from __future__ import annotations

from typing import Any
from typing import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jsparse3d.ops import _backend
from jsparse3d.ops import _native


class FusedAdam(NamedTuple):
  """An optax transformation (``init``, ``update``) with ``apply(grads, state, params) -> (new_params,
  new_state)``: the update already added to the parameters, in the same native call."""
  init: Callable
  update: Callable
  apply: Callable


def fused_adam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0, *,
               weight_decay: float = 0.0, implementation: str | None = None) -> FusedAdam:
  """``optax.adam`` (``optax.adamw`` when ``weight_decay > 0``), updated by one native call on a CPU.

  Args:
    learning_rate: a float or an optax schedule of the step count.
    b1, b2, eps, eps_root: as in ``optax.adam``.
    weight_decay: decoupled weight decay, as ``optax.adamw``'s (multiplied by the learning rate; no mask).
    implementation: ``"native"`` (CPU, float32 parameters), ``"xla"`` (optax's own update) or None (native where
      it builds and every parameter is float32).
  Returns:
    A :class:`FusedAdam`; ``init`` and the state are optax's, ``update`` returns optax's updates.

  Example:
    >>> tx = jsparse3d.training.fused_adam(1e-3)
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> new_params, state = tx.apply(grads, state, params)
    >>> round(float(new_params["w"][0, 0]), 6)   # Adam's first step moves every weight by the learning rate
    0.999
  """
  if weight_decay < 0:
    raise ValueError(f"fused_adam: weight_decay must be >= 0, got {weight_decay}.")
  _backend.resolve("adam", implementation)  # checks the name (and that the kernels build, for "native")
  if weight_decay:
    reference = optax.adamw(learning_rate, b1, b2, eps, eps_root, weight_decay=weight_decay)
  else:
    reference = optax.adam(learning_rate, b1, b2, eps, eps_root)
  settings = dict(b1=np.float32(b1), b2=np.float32(b2), one_minus_b1=np.float32(1 - b1),
                  one_minus_b2=np.float32(1 - b2), eps=np.float32(eps), eps_root=np.float32(eps_root),
                  weight_decay=np.float32(weight_decay))

  def native(grads, params) -> bool:
    if not all(getattr(v, "dtype", None) == jnp.float32 for v in jax.tree.leaves((grads, params))):
      if implementation == "native":
        raise ValueError("fused_adam(implementation='native') takes float32 parameters and gradients; use "
                         "implementation='xla' or None for other dtypes.")
      return False
    return _backend.resolve("adam", implementation) == "native"

  def scalars(state):
    """(bc1, bc2, step) for this step, computed as optax computes them, and the new state's counters."""
    with jax.numpy_dtype_promotion("standard"):  # Python floats against int32 counts, as in optax
      count = optax.safe_increment(state[0].count)
      bc1 = (1 - b1 ** count).astype(jnp.float32)
      bc2 = (1 - b2 ** count).astype(jnp.float32)
      schedule = state[-1]
      if callable(learning_rate):
        step = -1 * learning_rate(schedule.count)
        schedule = schedule._replace(count=optax.safe_increment(schedule.count))
      else:
        step = -1 * learning_rate
      return jnp.stack([bc1, bc2, jnp.asarray(step, jnp.float32)]), count, schedule

  def run(grads, state, params, apply: bool):
    treedef = jax.tree.structure(grads)
    leaves = [treedef.flatten_up_to(t) for t in (params, grads, state[0].mu, state[0].nu)]
    values, count, schedule = scalars(state)
    operands = [values] + [a for arrays in zip(*leaves) for a in arrays]
    shapes = [jax.ShapeDtypeStruct(p.shape, jnp.float32) for p in leaves[0] for _ in range(3)]
    # Results alias their operands (the new parameters or the update, mu, nu), so a donated state is updated in
    # place.
    aliases = {}
    for a in range(len(leaves[0])):
      aliases.update({1 + 4 * a + (0 if apply else 1): 3 * a, 3 + 4 * a: 3 * a + 1, 4 + 4 * a: 3 * a + 2})
    outs = jax.ffi.ffi_call(_native.target("adam"), shapes, vmap_method="sequential",
                            input_output_aliases=aliases)(*operands, apply=np.int64(apply), **settings)
    out, mu, nu = (treedef.unflatten(outs[k::3]) for k in range(3))
    new_state = (state[0]._replace(count=count, mu=mu, nu=nu), *state[1:-1], schedule)
    return out, new_state

  def update(grads, state, params=None):
    if not native(grads, params if params is not None else grads):
      with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats with int32 step counts
        return reference.update(grads, state, params)
    if weight_decay and params is None:
      raise ValueError("fused_adam with weight_decay needs the parameters: update(grads, state, params).")
    return run(grads, state, grads if params is None else params, apply=False)

  def apply(grads, state, params):
    if not native(grads, params):
      with jax.numpy_dtype_promotion("standard"):
        updates, state = reference.update(grads, state, params)
      return optax.apply_updates(params, updates), state
    return run(grads, state, params, apply=True)

  return FusedAdam(reference.init, update, apply)


def apply_gradients(optimizer: nnx.Optimizer, model: nnx.Module, grads: Any) -> None:
  """``optimizer.update(model, grads)``; with a :class:`FusedAdam` the new parameters come straight from its
  native call (no per-array additions to compile).

  Example:
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, jsparse3d.training.fused_adam(1e-3), wrt=nnx.Param)
    >>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((4, 3)))))(model)
    >>> jsparse3d.training.apply_gradients(optimizer, model, grads)   # as optimizer.update(model, grads)
    >>> int(optimizer.step[...]), round(float(model.bias[0]), 6)
    (1, -0.001)
  """
  if not isinstance(optimizer.tx, FusedAdam):
    optimizer.update(model, grads)
    return
  params = nnx.as_pure(nnx.state(model, optimizer.wrt))
  new_params, new_state = optimizer.tx.apply(nnx.as_pure(nnx.state(grads, optimizer.wrt)),
                                             nnx.as_pure(optimizer.opt_state), params)
  nnx.update(model, new_params)
  nnx.update(optimizer.opt_state, nnx.state(new_state))
  optimizer.step[...] += 1
