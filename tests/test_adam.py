"""fused_adam against optax's Adam and AdamW (the oracle), in a train step and on its own."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jsparse3d import models
from jsparse3d import training
from jsparse3d.training import fused_adam

SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20, 1e-4)


def _params(rng):
  shapes = {"kernel": (3, 3, 3, 16, 32), "bias": (7,), "scalar": (), "empty": (0, 4), "long": (70_000,)}
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _run(tx, params, grads, apply: bool):
  state = tx.init(params)
  step = jax.jit(tx.apply if apply else lambda g, s, p: _apply_updates(tx, g, s, p))
  with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats with int32 step counts
    for g in grads:
      params, state = step(g, state, params)
  return params, state


def _apply_updates(tx, g, s, p):
  updates, s = tx.update(g, s, p)
  return optax.apply_updates(p, updates), s


def _max_error(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)  # optax's state, leaf for leaf: checkpoints interchange
  return max((float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if x.size),
             default=0.0)


@pytest.mark.usefixtures("native_kernels")
@pytest.mark.parametrize("learning_rate,weight_decay", [(1e-3, 0.0), (SCHEDULE, 0.0), (SCHEDULE, 0.05)])
@pytest.mark.parametrize("apply", [True, False], ids=["apply", "update"])
def test_native_adam_matches_optax(rng, learning_rate, weight_decay, apply):
  params = _params(rng)
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params) for _ in range(8)]
  reference = (optax.adamw(learning_rate, weight_decay=weight_decay) if weight_decay else optax.adam(learning_rate))
  want = _run(reference, params, grads, apply=False)
  got = _run(fused_adam(learning_rate, weight_decay=weight_decay, implementation="native"), params, grads, apply)
  # XLA contracts optax's a * b + c into fused multiply-adds where the native kernel rounds twice: one float32
  # rounding apart (the parameters are O(1); 8 steps of 1e-2 move them by up to 0.08).
  assert _max_error(want, got) <= 5e-7
  assert _max_error(want[0], params) > 1e-3  # the steps moved the parameters


def test_xla_implementation_is_optax_and_chains_like_it(rng):
  params = _params(rng)
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params) for _ in range(3)]
  want = _run(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(SCHEDULE)), params, grads, apply=False)
  got = _run(optax.chain(optax.clip_by_global_norm(1.0), fused_adam(SCHEDULE, implementation="xla")), params,
             grads, apply=False)
  assert _max_error(want, got) == 0.0
  got = _run(optax.chain(optax.clip_by_global_norm(1.0), fused_adam(SCHEDULE)), params, grads, apply=False)
  assert _max_error(want, got) <= 5e-7


@pytest.mark.usefixtures("native_kernels")
def test_native_adam_does_not_depend_on_the_number_of_threads(rng, monkeypatch):
  params = {"w": jnp.asarray(rng.standard_normal(300_000), jnp.float32), "b": jnp.ones(5, jnp.float32)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params) for _ in range(2)]
  results = []
  for threads in ("1", "2", "7"):
    monkeypatch.setenv("JSPARSE3D_NATIVE_THREADS", threads)
    results.append(_run(fused_adam(1e-3, implementation="native"), params, grads, apply=True))  # new compiles
  for other in results[1:]:
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other)):
      np.testing.assert_array_equal(a, b)


def test_other_dtypes_use_optax_and_bad_settings_fail_clearly(rng):
  params = {"w": jnp.asarray(rng.standard_normal(10), jnp.bfloat16)}
  grads = [{"w": jnp.ones(10, jnp.bfloat16)}]
  want = _run(optax.adam(1e-3), params, grads, apply=False)
  assert _max_error(want, _run(fused_adam(1e-3), params, grads, apply=True)) == 0.0
  with pytest.raises(ValueError, match="float32 parameters"):
    _run(fused_adam(1e-3, implementation="native"), params, grads, apply=True)
  with pytest.raises(ValueError, match="weight_decay must be >= 0"):
    fused_adam(1e-3, weight_decay=-1.0)
  with pytest.raises(ValueError, match="implementation"):
    fused_adam(1e-3, implementation="pallas")


@pytest.mark.usefixtures("native_kernels")
def test_weight_decay_without_parameters_fails_clearly():
  tx, grads = fused_adam(1e-3, weight_decay=0.1), {"w": jnp.ones(10, jnp.float32)}
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(grads, tx.init(grads))


def test_train_step_with_fused_adam_matches_optax_adam():
  coords = np.random.default_rng(1).integers(0, 24, (600, 3))
  from jsparse3d import SparseTensor
  inputs = SparseTensor.from_coords(np.c_[np.zeros(len(coords), int), coords], np.ones((len(coords), 1), np.float32),
                                    duplicates="sum")
  labels = jnp.asarray(np.random.default_rng(2).integers(0, 5, inputs.capacity), jnp.int32)
  states = []
  for tx in (optax.adam(SCHEDULE), fused_adam(SCHEDULE)):
    model = models.UResNet(filters=(4, 8), depth=2, reps=1, num_classes=5, rngs=nnx.Rngs(0))
    graph, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
    initial = jax.tree.map(jnp.copy, state)  # the step donates its state
    step = training.make_train_step(graph, num_classes=5, num_events=1)
    for _ in range(4):
      state, loss, _ = step(state, inputs, labels)
    states.append(state)
  # Four steps of optax's Adam and of the fused one: the same to float32 rounding (measured 6e-8), while Adam's
  # steps of up to 1e-2 moved the weights.
  assert _max_error(*states) <= 2e-6
  assert _max_error(initial, states[1]) > 1e-3
  assert int(nnx.merge(graph, states[1])[1].step[...]) == 4
