"""Gradients, forward mode and second derivatives of sparse convolution, against the dense oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js
from oracles import dense_sparse_conv
from oracles import dense_sparse_conv_transpose
from oracles import random_tensor
from oracles import valid_part

G = 8


def _setup(rng, k, s, c_in=3, c_out=4, batch=2):
  x = random_tensor(rng, n_grid=G, density=0.3, channels=c_in, batch=batch)
  w = jnp.asarray(rng.standard_normal((k, k, k, c_in, c_out)).astype(np.float32))
  y = js.ops.conv3d(x, w, stride=s)
  cin, _ = valid_part(x)
  cout, _ = valid_part(y)
  n, m = int(x.num_valid), int(y.num_valid)
  probe = jnp.asarray(rng.standard_normal((m, c_out)).astype(np.float32))

  def sparse_loss(feats, w):
    out = js.ops.conv3d(x.replace(feats=feats), w, stride=s).feats[:m]
    return jnp.sum(jnp.sin(out) * probe)

  def dense_loss(feats, w):
    out = dense_sparse_conv(cin, feats[:n], w, cout, stride=(s,) * 3, dilation=(1,) * 3, shape=(G,) * 3, batch=batch)
    return jnp.sum(jnp.sin(out) * probe)

  return x, w, n, sparse_loss, dense_loss


def _close(a, b, tol=2e-5):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(1.0, np.abs(b).max(initial=0))
  assert np.abs(a - b).max(initial=0) <= tol * scale, np.abs(a - b).max()


@pytest.mark.parametrize("k, s", [(3, 1), (2, 1), (2, 2), (3, 2), (1, 1), (3, 3)])
def test_grad_matches_dense_oracle(rng, impl, k, s):
  x, w, n, sparse_loss, dense_loss = _setup(rng, k, s)
  gx, gw = jax.grad(sparse_loss, argnums=(0, 1))(x.feats, w)
  dx, dw = jax.grad(dense_loss, argnums=(0, 1))(x.feats, w)
  _close(gx, dx)
  _close(gw, dw)
  assert not np.asarray(gx[n:]).any()  # padded rows get no gradient


def test_transposed_conv_grad_matches_dense_oracle(rng, impl):
  x = random_tensor(rng, n_grid=G, density=0.3, channels=3)
  y = js.ops.conv3d(x, jnp.ones((2, 2, 2, 3, 4), jnp.float32), stride=2)
  cy, fy = valid_part(y)
  cx, _ = valid_part(x)
  m = int(y.num_valid)
  w_up = jnp.asarray(rng.standard_normal((2, 2, 2, 4, 3)).astype(np.float32))

  def sparse_loss(feats, w):
    return jnp.sum(jnp.cos(js.ops.conv_transpose3d(y.replace(feats=feats), w).feats))

  def dense_loss(feats, w):
    out = dense_sparse_conv_transpose(cy, feats[:m], w, cx, stride=(2,) * 3, shape=(G,) * 3, batch=1)
    return jnp.sum(jnp.cos(out)) + jnp.cos(0.0) * (x.capacity - len(cx)) * 3

  g = jax.grad(sparse_loss, argnums=(0, 1))(y.feats, w_up)
  d = jax.grad(dense_loss, argnums=(0, 1))(y.feats, w_up)
  _close(g[0], d[0])
  _close(g[1], d[1])


@pytest.mark.parametrize("k, s", [(3, 1), (2, 2)])
def test_jvp_matches_dense_oracle(rng, impl, k, s):
  x, w, _, sparse_loss, dense_loss = _setup(rng, k, s)
  tx = jnp.where(x.valid_mask[:, None], rng.standard_normal(x.feats.shape).astype(np.float32), 0.0)
  tw = jnp.asarray(rng.standard_normal(w.shape).astype(np.float32))
  p1, t1 = jax.jvp(sparse_loss, (x.feats, w), (tx, tw))
  p2, t2 = jax.jvp(dense_loss, (x.feats, w), (tx, tw))
  _close(p1, p2)
  _close(t1, t2)


@pytest.mark.parametrize("k, s", [(3, 1), (2, 2)])
def test_hessian_vector_products_match_dense_oracle(rng, impl, k, s):
  x, w, _, sparse_loss, dense_loss = _setup(rng, k, s)
  vx = jnp.where(x.valid_mask[:, None], rng.standard_normal(x.feats.shape).astype(np.float32), 0.0)
  vw = jnp.asarray(rng.standard_normal(w.shape).astype(np.float32))

  def hvp(f):  # forward-over-reverse
    return jax.jvp(jax.grad(f, argnums=(0, 1)), (x.feats, w), (vx, vw))[1]

  def hvp_rev(f):  # reverse-over-reverse
    return jax.grad(lambda a, b: jnp.vdot(jax.grad(f, argnums=(0, 1))(a, b)[0], vx)
                    + jnp.vdot(jax.grad(f, argnums=(0, 1))(a, b)[1], vw), argnums=(0, 1))(x.feats, w)

  for got, want in zip(hvp(sparse_loss), hvp(dense_loss)):
    _close(got, want, 5e-5)
  for got, want in zip(hvp_rev(sparse_loss), hvp_rev(dense_loss)):
    _close(got, want, 5e-5)


def test_grad_matches_finite_differences_in_float64(rng):
  with jax.enable_x64(True):
    x = random_tensor(rng, n_grid=6, density=0.35, channels=2, dtype=np.float64)
    assert x.feats.dtype == jnp.float64
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 2, 2)))
    w2 = jnp.asarray(rng.standard_normal((2, 2, 2, 2, 3)))

    def loss(feats, w, w2):
      h = js.ops.relu(js.ops.conv3d(x.replace(feats=feats), w))
      h = js.ops.conv3d(h, w2, stride=2)
      return jnp.sum(jnp.tanh(h.feats) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(x.feats, w, w2)
    eps = 1e-6
    for arg, g in enumerate(grads):
      args = [x.feats, w, w2]
      flat = np.asarray(args[arg]).reshape(-1)
      picks = rng.choice(flat.size, 12, replace=False)
      for i in picks:
        if arg == 0 and i // x.num_channels >= int(x.num_valid):
          continue
        plus, minus = flat.copy(), flat.copy()
        plus[i] += eps
        minus[i] -= eps
        a1, a2 = list(args), list(args)
        a1[arg] = jnp.asarray(plus.reshape(args[arg].shape))
        a2[arg] = jnp.asarray(minus.reshape(args[arg].shape))
        fd = (float(loss(*a1)) - float(loss(*a2))) / (2 * eps)
        assert abs(fd - float(np.asarray(g).reshape(-1)[i])) <= 1e-6 * max(1.0, abs(fd))


def test_input_gradient_is_a_gather_over_the_transposed_map(rng):
  x = random_tensor(rng)
  w = jnp.ones((3, 3, 3, 3, 2), jnp.float32)
  _, x = js.ops.kernel_map(x, 3)  # the map is built outside the differentiated function
  jaxpr = jax.make_jaxpr(jax.grad(lambda f: js.ops.conv3d(x.replace(feats=f), w).feats.sum()))(x.feats)
  names = {e.primitive.name for e in jaxpr.jaxpr.eqns}
  assert "jsparse3d_sparse_conv" in names
  assert not any("scatter" in n for n in names), names


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_gradients(rng, impl, dtype):
  x = random_tensor(rng, channels=8)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 8, 8)).astype(np.float32) / 8)
  f = lambda feats, w: jnp.sum(js.ops.conv3d(x.replace(feats=feats), w).feats.astype(jnp.float32) ** 2)
  g32 = jax.grad(f, argnums=(0, 1))(x.feats, w)
  glo = jax.grad(f, argnums=(0, 1))(x.feats.astype(dtype), w.astype(dtype))
  for a, b in zip(glo, g32):
    assert a.dtype == dtype
    _close(a, b, 0.05 if dtype == jnp.bfloat16 else 0.01)
