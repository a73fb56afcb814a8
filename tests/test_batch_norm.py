"""The fused masked batch norm (+ ReLU): forward, gradients, forward mode, Hessian-vector products and vmap against
an independent oracle (numpy, and JAX's autodiff of the textbook formula on the valid rows alone), for both
implementations; native results independent of the thread count; no valid rows; the layer in both modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jsparse3d as js
from jsparse3d.ops._batch_norm import batch_norm

EPS = 1e-5


def _inputs(rng, n=3000, valid=2300, c=24):
  x = (rng.standard_normal((n, c)) * 2 + 0.5).astype(np.float32)
  mask = np.zeros(n, bool)
  mask[rng.choice(n, valid, replace=False)] = True  # valid rows anywhere, not only a prefix
  scale = rng.standard_normal(c).astype(np.float32)
  bias = rng.standard_normal(c).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(mask), jnp.asarray(scale), jnp.asarray(bias)


def _oracle(x, mask, scale, bias, relu):
  """The textbook batch norm of the valid rows alone (gathered with a static index), scattered back."""
  rows = np.flatnonzero(np.asarray(mask))
  v = x[rows]
  mean = jnp.mean(v, axis=0)
  var = jnp.mean((v - mean[None]) ** 2, axis=0)
  z = (v - mean[None]) / jnp.sqrt(var + EPS)[None] * scale[None] + bias[None]
  z = jnp.maximum(z, 0) if relu else z
  return jnp.zeros(x.shape, z.dtype).at[rows].set(z)


def _max_rel(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / max(1.0, np.abs(want).max())


@pytest.mark.parametrize("relu", [False, True])
def test_forward_and_statistics_match_numpy(rng, impl, relu):
  x, mask, scale, bias = _inputs(rng)
  y, mean, var = jax.jit(lambda *a: batch_norm(*a, relu=relu, implementation=impl))(x, mask, scale, bias)
  v = np.asarray(x, np.float64)[np.asarray(mask)]
  want_mean, want_var = v.mean(axis=0), v.var(axis=0)
  z = (np.asarray(x, np.float64) - want_mean) / np.sqrt(want_var + EPS) * np.asarray(scale) + np.asarray(bias)
  want = np.where(np.asarray(mask)[:, None], np.maximum(z, 0) if relu else z, 0)
  assert _max_rel(y, want) < 2e-6 and _max_rel(mean, want_mean) < 1e-6 and _max_rel(var, want_var) < 1e-6
  assert not np.asarray(y)[~np.asarray(mask)].any()


@pytest.mark.parametrize("relu", [False, True])
def test_derivatives_match_autodiff_of_the_textbook_formula(rng, impl, relu):
  x, mask, scale, bias = _inputs(rng)
  probe = jnp.asarray(rng.standard_normal(x.shape).astype(np.float32))
  ours = lambda x, s, b: batch_norm(x, mask, s, b, relu=relu, implementation=impl)[0]
  oracle = lambda x, s, b: _oracle(x, mask, s, b, relu)
  args, tangents = (x, scale, bias), (probe, scale[::-1], bias[::-1])
  # Gradients of <y, probe>: input, scale, bias.
  got = jax.jit(jax.grad(lambda *a: jnp.vdot(ours(*a), probe), (0, 1, 2)))(*args)
  want = jax.grad(lambda *a: jnp.vdot(oracle(*a), probe), (0, 1, 2))(*args)
  assert max(_max_rel(g, w) for g, w in zip(got, want)) < 2e-5
  # Forward mode.
  assert _max_rel(jax.jvp(ours, args, tangents)[1], jax.jvp(oracle, args, tangents)[1]) < 2e-5
  # Hessian-vector products of a non-quadratic loss (second derivatives go through the jnp definitions).
  hvp = lambda f: jax.jvp(jax.grad(lambda *a: jnp.vdot(f(*a) ** 2, probe), (0, 1, 2)), args, tangents)[1]
  assert max(_max_rel(g, w) for g, w in zip(hvp(ours), hvp(oracle))) < 1e-4


def test_vmap_normalises_each_batch_element_alone(rng, impl):
  x, mask, scale, bias = _inputs(rng, n=500, valid=300, c=5)
  xs = jnp.stack([x, 3 * x + 1])
  f = lambda x: batch_norm(x, mask, scale, bias, relu=True, implementation=impl)[0]
  got = jax.vmap(f)(xs)
  for i in range(2):
    assert _max_rel(got[i], _oracle(xs[i], mask, scale, bias, True)) < 2e-6
  g = jax.vmap(jax.grad(lambda x: jnp.sum(f(x) ** 2)))(xs)
  for i in range(2):
    assert _max_rel(g[i], jax.grad(lambda x: jnp.sum(_oracle(x, mask, scale, bias, True) ** 2))(xs[i])) < 2e-5


def test_gradient_matches_finite_differences_in_float64(rng):
  with jax.enable_x64(True):
    x, mask, scale, bias = (jnp.asarray(a, jnp.float64) if a.dtype != bool else a for a in _inputs(rng, 40, 25, 3))
    probe = jnp.asarray(rng.standard_normal(x.shape))
    loss = lambda x, s: jnp.vdot(batch_norm(x, mask, s, bias, relu=True, implementation="xla")[0] ** 2, probe)
    gx, gs = jax.grad(loss, (0, 1))(x, scale)
    dx, ds = jnp.asarray(rng.standard_normal(x.shape)), jnp.asarray(rng.standard_normal(scale.shape))
    h = 1e-6
    fd = (loss(x + h * dx, scale + h * ds) - loss(x - h * dx, scale - h * ds)) / (2 * h)
    assert abs(float(fd) - float(jnp.vdot(gx, dx) + jnp.vdot(gs, ds))) < 1e-6 * max(1.0, abs(float(fd)))


@pytest.mark.usefixtures("native_kernels")
def test_native_results_do_not_depend_on_the_number_of_threads(rng, monkeypatch):
  x, mask, scale, bias = _inputs(rng, n=9000, valid=7000, c=40)  # 9 row blocks
  probe = jnp.asarray(rng.standard_normal(x.shape).astype(np.float32))

  def fwd_bwd(x, s, b):
    y, mean, var = batch_norm(x, mask, s, b, relu=True, implementation="native")
    return jnp.vdot(y, probe), (mean, var)

  results = []
  for threads in ("1", "2", "7"):
    monkeypatch.setenv("JSPARSE3D_NATIVE_THREADS", threads)
    results.append(jax.jit(jax.value_and_grad(fwd_bwd, (0, 1, 2), has_aux=True))(x, scale, bias))  # new compile
  for other in results[1:]:
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other)):
      np.testing.assert_array_equal(a, b)


def test_no_valid_rows_gives_zeros_not_nans(rng, impl):
  x, _, scale, bias = _inputs(rng, n=64, valid=1, c=3)
  mask = jnp.zeros(64, bool)
  y, mean, var = batch_norm(x, mask, scale, bias, implementation=impl)
  grads = jax.grad(lambda x, s: jnp.sum(batch_norm(x, mask, s, bias, implementation=impl)[0]), (0, 1))(
      x, scale)
  assert not np.asarray(y).any() and not np.asarray(mean).any() and not np.asarray(var).any()
  assert all(np.isfinite(np.asarray(g)).all() and not np.asarray(g).any() for g in grads)


def test_layer_relu_fuses_the_activation_and_eval_mode_uses_running_averages(rng):
  coords = rng.integers(0, 20, (300, 3))
  x = js.SparseTensor.from_coords(coords, rng.standard_normal((300, 6)).astype(np.float32), capacity=512,
                                  duplicates="mean")
  fused = js.nn.BatchNorm(6, relu=True, rngs=nnx.Rngs(0))
  plain = js.nn.BatchNorm(6, rngs=nnx.Rngs(0))
  assert _max_rel(fused(x).feats, js.ops.relu(plain(x)).feats) < 1e-6
  np.testing.assert_allclose(np.asarray(fused.norm.mean[...]), np.asarray(plain.norm.mean[...]), rtol=1e-6)
  fused.eval()
  n = int(x.num_valid)
  f = np.asarray(x.feats, np.float64)[:n]
  want = np.maximum((f - np.asarray(fused.norm.mean[...])) / np.sqrt(np.asarray(fused.norm.var[...]) + EPS), 0)
  got = np.asarray(fused(x).feats)
  assert _max_rel(got[:n], want) < 1e-5 and not got[n:].any()
  assert jax.tree.structure(nnx.state(fused)) == jax.tree.structure(nnx.state(plain))  # same checkpoints
