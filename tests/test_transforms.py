"""jit, vmap, pmap and checkpoint compose with sparse convolution; results are bitwise deterministic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js
from oracles import random_tensor


def _net(x, w1, w2, w3):
  h = js.ops.relu(js.ops.conv3d(x, w1))
  d = js.ops.relu(js.ops.conv3d(h, w2, stride=2))
  u = js.ops.conv_transpose3d(d, w3)
  return js.ops.cat([h, u])


def _weights(rng, c=3):
  f = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32) / 4)
  return f(3, 3, 3, c, 4), f(2, 2, 2, 4, 5), f(2, 2, 2, 5, 4)


def _loss(feats, x, ws):
  return jnp.sum(jnp.tanh(_net(x.replace(feats=feats), *ws).feats) ** 2)


def test_jit_equals_eager(rng):
  x = random_tensor(rng, n_grid=10, density=0.3)
  ws = _weights(rng)
  eager = _net(x, *ws)
  jitted = jax.jit(_net)(x, *ws)
  np.testing.assert_array_equal(eager.feats, jitted.feats)
  np.testing.assert_array_equal(eager.coords, jitted.coords)


def test_forward_and_backward_are_bitwise_deterministic(rng, impl):
  x = random_tensor(rng, n_grid=14, density=0.3, channels=8)
  ws = _weights(rng, 8)
  grad = jax.jit(jax.grad(_loss, argnums=(0, 2)))
  a = grad(x.feats, x, ws)
  b = grad(x.feats, x, ws)
  c = jax.jit(jax.grad(lambda *args: _loss(*args), argnums=(0, 2)))(x.feats, x, ws)  # a fresh compilation
  for u, v, t in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
    np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(u, t)
  y1, y2 = jax.jit(_net)(x, *ws), jax.jit(_net)(x, *ws)
  np.testing.assert_array_equal(y1.feats, y2.feats)


def _stack(tensors):
  return jax.tree.map(lambda *v: jnp.stack(v), *tensors)


def _pair(rng, capacity=300):
  xs = []
  for _ in range(2):
    t = random_tensor(rng, n_grid=9, density=0.25)
    xs.append(js.SparseTensor.from_coords(np.asarray(t.coords)[: int(t.num_valid)],
                                          np.asarray(t.feats)[: int(t.num_valid)], capacity=capacity))
  return xs


# The XLA path: 20-27 s on 2 cores, run with -m slow; the native path stays in the default suite.
@pytest.mark.parametrize("impl", [pytest.param("xla", marks=pytest.mark.slow), "native"], indirect=True)
def test_vmap_over_stacked_tensors(rng, impl):
  xs = _pair(rng)
  ws = _weights(rng)
  stacked = _stack(xs)
  out = jax.vmap(lambda x: _net(x, *ws).feats)(stacked)
  for i, x in enumerate(xs):
    np.testing.assert_allclose(out[i], _net(x, *ws).feats, rtol=0, atol=1e-6)
  g = jax.vmap(jax.grad(_loss), in_axes=(0, 0, None))(stacked.feats, stacked, ws)
  for i, x in enumerate(xs):
    np.testing.assert_allclose(g[i], jax.grad(_loss)(x.feats, x, ws), rtol=0, atol=1e-6)


def test_pmap_over_devices(rng, impl):
  n = jax.local_device_count()
  assert n >= 2, "conftest should provide several CPU devices"
  xs = _pair(rng) * (n // 2)
  ws = _weights(rng)
  out = jax.pmap(lambda x: _net(x, *ws).feats)(_stack(xs))
  for i, x in enumerate(xs):
    np.testing.assert_allclose(out[i], _net(x, *ws).feats, rtol=0, atol=1e-6)


# The XLA path: 17-21 s on 2 cores, run with -m slow.
@pytest.mark.parametrize("impl", [pytest.param("xla", marks=pytest.mark.slow), "native"], indirect=True)
def test_checkpoint_gives_the_same_gradient(rng, impl):
  x = random_tensor(rng)
  ws = _weights(rng)
  g1 = jax.grad(_loss)(x.feats, x, ws)
  g2 = jax.grad(jax.checkpoint(_loss))(x.feats, x, ws)
  np.testing.assert_allclose(g1, g2, rtol=0, atol=1e-6)


def test_errors_flagged_inside_jit_are_raised_at_the_boundary(rng):
  x, other = _pair(rng)
  with pytest.raises(ValueError, match="coordinate mismatch"):
    js.ops.cat([x, other])
  out = jax.jit(lambda a, b: js.ops.cat([a, b]))(x, other)
  with pytest.raises(ValueError, match="coordinate mismatch"):
    js.raise_if_error(out)
  # Flags propagate to everything computed from a flagged tensor.
  y = jax.jit(lambda a, b: js.ops.conv3d(js.ops.cat([a, b]), jnp.ones((3, 3, 3, 6, 2))))(x, other)
  with pytest.raises(ValueError, match="coordinate mismatch"):
    js.raise_if_error({"out": y})
  js.raise_if_error(jax.jit(lambda a: js.ops.cat([a, a]))(x))  # no error
