"""Pooling, global pooling, elementwise helpers, concatenation and dense conversion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js
from oracles import np_downsample
from oracles import np_lookup
from oracles import random_tensor
from oracles import valid_part


def _np_pool(cin, fin, cout, reduce):
  factor = 2
  parent = np.asarray(cin, np.int64).copy()
  parent[:, 1:] = np.floor_divide(parent[:, 1:], factor) * factor
  rows = np_lookup(cout, parent)
  out = np.zeros((len(cout), fin.shape[1]))
  for j in range(len(cout)):
    out[j] = reduce(fin[rows == j], axis=0)
  return out


@pytest.mark.parametrize("pool, reduce", [(js.ops.max_pool, np.max), (js.ops.avg_pool, np.mean)])
def test_pooling_matches_numpy(rng, pool, reduce):
  x = random_tensor(rng, n_grid=10, density=0.3, channels=4, batch=2, offset=(-5, 0, 3))
  y = pool(x)
  cin, fin = valid_part(x)
  cout, got = valid_part(y)
  assert y.stride == (2, 2, 2)
  np.testing.assert_array_equal(cout[np.lexsort(cout.T[::-1])], np_downsample(cin, 2))
  np.testing.assert_allclose(got, _np_pool(cin, fin, cout, reduce), rtol=1e-6, atol=1e-6)
  assert not np.asarray(y.feats[int(y.num_valid):]).any()
  # Pooling remembers its parent: a transposed conv returns to x's coordinates.
  z = js.ops.conv_transpose3d(y, jnp.ones((2, 2, 2, 4, 1), jnp.float32))
  assert z.coords is x.coords


def test_max_pool_gradient_is_finite_and_sparse(rng):
  x = random_tensor(rng, channels=2)
  g = jax.grad(lambda f: js.ops.max_pool(x.replace(feats=f)).feats.sum())(x.feats)
  n = int(x.num_valid)
  assert np.isfinite(np.asarray(g)).all() and not np.asarray(g[n:]).any()
  # Each output's gradient of 1 goes to its max inputs: the total equals the number of outputs per channel.
  y = js.ops.max_pool(x)
  np.testing.assert_allclose(np.asarray(g).sum(axis=0), [int(y.num_valid)] * 2, rtol=1e-6)


def test_global_pools_per_batch_item(rng):
  x = random_tensor(rng, n_grid=6, density=0.4, channels=3, batch=3)
  c, f = valid_part(x)
  avg = np.asarray(js.ops.global_avg_pool(x, batch_size=4))
  mx = np.asarray(js.ops.global_max_pool(x, batch_size=4))
  for b in range(3):
    np.testing.assert_allclose(avg[b], f[c[:, 0] == b].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mx[b], f[c[:, 0] == b].max(axis=0), rtol=1e-6)
  assert not avg[3].any() and not mx[3].any()  # an empty batch item gives zeros
  with pytest.raises(ValueError, match="batch_size"):
    js.ops.global_avg_pool(x, batch_size=0)


@pytest.mark.parametrize("fn, ref", [(js.ops.relu, lambda v: np.maximum(v, 0)),
                                     (js.ops.sigmoid, lambda v: 1 / (1 + np.exp(-v))), (js.ops.tanh, np.tanh)])
def test_elementwise_keeps_padding_zero(rng, fn, ref):
  x = random_tensor(rng, capacity_extra=4)
  y = fn(x)
  n = int(x.num_valid)
  np.testing.assert_allclose(y.feats[:n], ref(np.asarray(x.feats[:n])), rtol=1e-6, atol=1e-7)
  assert not np.asarray(y.feats[n:]).any()  # sigmoid(0) = 0.5 would leak without masking


def test_cat_and_add(rng):
  x = random_tensor(rng)
  y = js.ops.relu(x)
  z = js.ops.cat([x, y])
  np.testing.assert_array_equal(z.feats, np.concatenate([x.feats, y.feats], axis=1))
  np.testing.assert_array_equal(js.ops.add(x, y).feats, x.feats + y.feats)
  with pytest.raises(ValueError, match="same coordinates"):
    js.ops.cat([x, js.ops.max_pool(x)])


def test_dense_round_trip(rng):
  x = random_tensor(rng, n_grid=7, density=0.3, channels=2, batch=2)
  d = js.ops.to_dense(x, (7, 7, 7), batch_size=2)
  back = js.ops.from_dense(d, capacity=x.capacity)
  np.testing.assert_array_equal(back.coords, x.coords)
  np.testing.assert_array_equal(back.feats, x.feats)
  # A strided grid with an origin.
  y = js.ops.from_dense(d, stride=2, origin=(-4, 0, 10))
  assert y.stride == (2, 2, 2)
  np.testing.assert_array_equal(js.ops.to_dense(y, (7, 7, 7), batch_size=2, origin=(-4, 0, 10)), d)


def test_dense_overflow_and_outside_are_errors(rng):
  x = random_tensor(rng, n_grid=7, density=0.3, channels=2)
  d = js.ops.to_dense(x, (7, 7, 7), batch_size=1)
  with pytest.raises(ValueError, match="capacity overflow"):
    js.ops.from_dense(d, capacity=5)
  flagged = jax.jit(lambda g: js.ops.from_dense(g, capacity=5))(d)
  with pytest.raises(ValueError, match="capacity overflow"):
    js.raise_if_error(flagged)
  with pytest.raises(ValueError, match="outside the dense box"):
    js.ops.to_dense(x, (3, 3, 3), batch_size=1)
  with pytest.raises(Exception, match="outside the dense box"):
    jax.block_until_ready(jax.jit(lambda t: js.ops.to_dense(t, (3, 3, 3), batch_size=1))(x))
