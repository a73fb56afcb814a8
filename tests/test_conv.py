"""conv3d / conv_transpose3d values against dense lax convolution and brute-force numpy, on the max error."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js
from oracles import dense_sparse_conv
from oracles import dense_sparse_conv_transpose
from oracles import np_conv
from oracles import np_downsample
from oracles import random_tensor
from oracles import valid_part

G = 9  # dense box edge


def _tol(dtype, reduction):
  """Relative max-error tolerance scaled by the reduction length (K * C_in terms)."""
  eps = {jnp.float32: 1.2e-7, jnp.float16: 9.8e-4, jnp.bfloat16: 7.8e-3}[dtype]
  return 8 * eps * np.sqrt(reduction) + (0 if dtype == jnp.float32 else 4 * eps)


def assert_close(got, want, dtype, reduction):
  """Max error within the tolerance, relative to the largest magnitude of the oracle."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = max(1.0, np.abs(want).max(initial=0))
  err = np.abs(got - want).max(initial=0)
  assert err <= _tol(dtype, reduction) * scale, f"max error {err:.3g} > {_tol(dtype, reduction) * scale:.3g}"


@pytest.mark.parametrize("k, s, d", list(itertools.product([1, 2, 3, 5], [1, 2, 3], [1, 2])))
def test_conv3d_matches_dense_oracle(rng, impl, k, s, d):
  x = random_tensor(rng, n_grid=G, density=0.25, channels=3, batch=2)
  w = jnp.asarray(rng.standard_normal((k, k, k, 3, 4)).astype(np.float32))
  y = js.ops.conv3d(x, w, stride=s, dilation=d)
  cin, fin = valid_part(x)
  cout, got = valid_part(y)
  want = dense_sparse_conv(cin, jnp.asarray(fin, jnp.float32), w, cout, stride=(s,) * 3, dilation=(d,) * 3,
                           shape=(G,) * 3, batch=2)
  assert_close(got, want, jnp.float32, k ** 3 * 3)
  if s > 1:
    np.testing.assert_array_equal(cout[np.lexsort(cout.T[::-1])], np_downsample(cin, (s,) * 3))
  else:
    np.testing.assert_array_equal(cout, cin)
  n = int(y.num_valid)
  assert not np.asarray(y.feats[n:]).any() and (np.asarray(y.coords[n:, 0]) == -1).all()


@pytest.mark.parametrize("ks, dil", [((3, 2, 1), (1, 2, 3)), ((4, 4, 4), (1, 1, 1)), ((7, 7, 7), (1, 1, 1)),
                                     ((6, 3, 5), (3, 1, 2))])
def test_conv3d_matches_numpy_brute_force(rng, impl, ks, dil):
  x = random_tensor(rng, n_grid=10, density=0.2, channels=5, batch=3, offset=(-20, 7, -3))
  w = jnp.asarray(rng.standard_normal((*ks, 5, 6)).astype(np.float32))
  y = js.ops.conv3d(x, w, dilation=dil)
  cin, fin = valid_part(x)
  _, got = valid_part(y)
  want = np_conv(cin, fin, w, cin, dilation=dil)
  assert_close(got, want, jnp.float32, np.prod(ks) * 5)


def test_strided_conv_on_strided_tensor_matches_numpy(rng):
  x = random_tensor(rng, n_grid=16, density=0.15, channels=2, batch=2, offset=(-8, -8, 0))
  w1 = jnp.asarray(rng.standard_normal((2, 2, 2, 2, 3)).astype(np.float32))
  w2 = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 4)).astype(np.float32))
  y = js.ops.conv3d(x, w1, stride=2)
  z = js.ops.conv3d(y, w2, stride=2)
  zs = js.ops.conv3d(y, w2)  # submanifold at stride 2: offsets scale by 2
  cy, fy = valid_part(y)
  cz, gz = valid_part(z)
  assert_close(gz, np_conv(cy, fy, w2, cz, dilation=(1,) * 3, in_stride=(2,) * 3), jnp.float32, 27 * 3)
  assert_close(valid_part(zs)[1], np_conv(cy, fy, w2, cy, dilation=(1,) * 3, in_stride=(2,) * 3), jnp.float32,
               27 * 3)


@pytest.mark.parametrize("k, s", [(2, 2), (3, 2), (2, 3), (3, 3), (1, 2), (5, 2)])
def test_conv_transpose3d_is_the_dense_adjoint(rng, impl, k, s):
  x = random_tensor(rng, n_grid=G, density=0.3, channels=3, batch=2)
  w_down = jnp.asarray(rng.standard_normal((k, k, k, 3, 4)).astype(np.float32))
  y = js.ops.conv3d(x, w_down, stride=s)
  w_up = jnp.asarray(rng.standard_normal((k, k, k, 4, 3)).astype(np.float32))
  z = js.ops.conv_transpose3d(y, w_up, stride=s)
  assert z.stride == (1, 1, 1) and z.coords is x.coords  # the finer tensor's coordinates, row for row
  cy, fy = valid_part(y)
  cx, _ = valid_part(x)
  want = dense_sparse_conv_transpose(cy, jnp.asarray(fy, jnp.float32), w_up, cx, stride=(s,) * 3, shape=(G,) * 3,
                                     batch=2)
  got = valid_part(z)[1]
  assert_close(got, want, jnp.float32, k ** 3 * 4)
  # With an explicit target, and with a freshly built map (no cached down map for this kernel size).
  z2 = js.ops.conv_transpose3d(y, w_up, stride=s, target=x)
  np.testing.assert_array_equal(z2.feats, z.feats)
  y_other = js.ops.max_pool(x, s, s).replace(feats=y.feats)
  z3 = js.ops.conv_transpose3d(y_other, w_up, stride=s)
  np.testing.assert_array_equal(z3.feats, z.feats)


def test_transposed_conv_is_adjoint_by_inner_products(rng, impl):
  x = random_tensor(rng, n_grid=10, density=0.3, channels=3)
  w = jnp.asarray(rng.standard_normal((2, 2, 2, 3, 5)).astype(np.float32))
  y = js.ops.conv3d(x, w, stride=2)
  g = y.replace(feats=jnp.where(y.valid_mask[:, None], rng.standard_normal(y.feats.shape).astype(np.float32), 0.0))
  back = js.ops.conv_transpose3d(g, jnp.swapaxes(w, 3, 4))
  lhs = float(jnp.vdot(y.feats, g.feats))
  rhs = float(jnp.vdot(x.feats, back.feats))
  assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))
  # Stride 1 transposed conv is the adjoint of the submanifold conv.
  ws = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 3)).astype(np.float32))
  h = x.replace(feats=jnp.where(x.valid_mask[:, None], rng.standard_normal(x.feats.shape).astype(np.float32), 0.0))
  lhs = float(jnp.vdot(js.ops.conv3d(x, ws).feats, h.feats))
  rhs = float(jnp.vdot(x.feats, js.ops.conv_transpose3d(h, jnp.swapaxes(ws, 3, 4), stride=1).feats))
  assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))


@pytest.mark.parametrize("k, s, d", [(3, 2, 2), (2, 2, 3), (3, 3, 2), ((3, 2, 1), (2, 1, 2), (1, 2, 3))])
@pytest.mark.parametrize("maps", ["native", "xla"])
def test_transposed_conv_is_the_adjoint_of_a_dilated_strided_conv(rng, k, s, d, maps):
  # Regression: the cached map's key dropped the dilation and the rebuild used dilation 1
  # (<Ax, g> = -34.28 against <x, A^T g> = 30.38 at dilation 2).
  x = random_tensor(rng, n_grid=12, density=0.3, channels=3, batch=2)
  ks = (k,) * 3 if isinstance(k, int) else k
  _, x = js.ops.kernel_map(x, 1, implementation=maps)  # builds x's maps with ``maps`` from here on
  w = jnp.asarray(rng.standard_normal((*ks, 3, 4)).astype(np.float32))
  y = js.ops.conv3d(x, w, stride=s, dilation=d)
  g = y.replace(feats=jnp.where(y.valid_mask[:, None], rng.standard_normal(y.feats.shape).astype(np.float32), 0.0))
  lhs = float(jnp.vdot(y.feats, g.feats))
  for back in (js.ops.conv_transpose3d(g, jnp.swapaxes(w, 3, 4), stride=s, dilation=d),
               js.ops.conv_transpose3d(g, jnp.swapaxes(w, 3, 4), stride=s, dilation=d, target=x),
               js.ops.conv_transpose3d(js.ops.max_pool(x, s, s).replace(feats=g.feats), jnp.swapaxes(w, 3, 4),
                                       stride=s, dilation=d)):  # no cached map: built with the dilation
    rhs = float(jnp.vdot(x.feats, back.feats))
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs)), (lhs, rhs)
  # and against the dense oracle's adjoint where the dilation is isotropic
  if isinstance(d, int) and isinstance(k, int):
    cy, fy = valid_part(g)
    cx, _ = valid_part(x)
    want = dense_sparse_conv_transpose(cy, jnp.asarray(fy), jnp.swapaxes(w, 3, 4), cx, stride=(s,) * 3,
                                       shape=(12,) * 3, batch=2, dilation=(d,) * 3)
    got = valid_part(js.ops.conv_transpose3d(g, jnp.swapaxes(w, 3, 4), stride=s, dilation=d))[1]
    assert_close(got, want, jnp.float32, k ** 3 * 4)


def test_transposed_conv_onto_the_parent_reuses_its_map(rng, monkeypatch):
  # Regression: target=x rebuilt the map on every call although x is the strided conv's own input.
  from jsparse3d.ops import _conv
  x = random_tensor(rng, n_grid=10, density=0.3, channels=3)
  w = jnp.asarray(rng.standard_normal((2, 2, 2, 3, 4)).astype(np.float32))
  h = js.ops.relu(x)  # a new tensor on the same coordinates, as in a U-Net
  y = js.ops.conv3d(h, w, stride=2)
  builds = []
  real = _conv._kernel_map.strided_map
  monkeypatch.setattr(_conv._kernel_map, "strided_map", lambda *a, **k: builds.append(1) or real(*a, **k))
  up = jnp.swapaxes(w, 3, 4)
  a = js.ops.conv_transpose3d(y, up, target=x)
  b = js.ops.conv_transpose3d(y, up)
  assert builds == [] and a.coords is x.coords
  np.testing.assert_array_equal(a.feats, b.feats)
  other = js.SparseTensor.from_coords(*valid_part(x))  # equal coordinates, other arrays: one build
  np.testing.assert_array_equal(js.ops.conv_transpose3d(y, up, target=other).feats[:int(x.num_valid)],
                                b.feats[:int(x.num_valid)])
  assert builds == [1]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_feature_dtypes_accumulate_in_float32(rng, impl, dtype):
  x = random_tensor(rng, n_grid=10, density=0.3, channels=16, dtype=np.float32)
  w = rng.standard_normal((3, 3, 3, 16, 8)).astype(np.float32) / 8
  xd = x.replace(feats=x.feats.astype(dtype))
  wd = jnp.asarray(w).astype(dtype)
  y = js.ops.conv3d(xd, wd)
  assert y.feats.dtype == dtype
  cin, fin = valid_part(xd)
  want = np_conv(cin, fin, np.asarray(wd, np.float64), cin, dilation=(1, 1, 1))
  assert_close(valid_part(y)[1], want, dtype, 27 * 16)


def test_bias_only_on_valid_rows(rng):
  x = random_tensor(rng, capacity_extra=5)
  w = jnp.zeros((3, 3, 3, 3, 2), jnp.float32)
  y = js.ops.conv3d(x, w, bias=jnp.array([1.0, -2.0]))
  n = int(x.num_valid)
  np.testing.assert_array_equal(y.feats[:n], np.tile([1.0, -2.0], (n, 1)))
  assert not np.asarray(y.feats[n:]).any()


def test_empty_tensor_gives_empty_outputs(impl):
  x = js.SparseTensor.from_coords(np.zeros((0, 4), int), np.zeros((0, 3), np.float32), capacity=8)
  w = jnp.ones((3, 3, 3, 3, 2), jnp.float32)
  for y in (js.ops.conv3d(x, w), js.ops.conv3d(x, w, stride=2)):
    assert int(y.num_valid) == 0 and y.feats.shape == (8, 2) and not np.asarray(y.feats).any()
  y = js.ops.conv3d(x, w[:2, :2, :2], stride=2)
  z = js.ops.conv_transpose3d(y, jnp.ones((2, 2, 2, 2, 4), jnp.float32))
  assert z.feats.shape == (8, 4) and not np.asarray(z.feats).any()
  g = jax.grad(lambda f: js.ops.conv3d(x.replace(feats=f), w).feats.sum())(x.feats)
  assert not np.asarray(g).any()


@pytest.mark.parametrize("capacity", [0, 1, 8])
@pytest.mark.parametrize("maps", ["native", "xla"])
def test_every_strided_op_takes_an_empty_tensor_at_any_capacity(capacity, maps):
  # Regression: capacity 0 with the default output capacity failed inside a gather.
  x = js.SparseTensor.from_coords(np.zeros((0, 4), int), np.zeros((0, 3), np.float32), capacity=capacity)
  kmap, y = js.ops.kernel_map(x, 2, stride=2, implementation=maps)
  assert int(kmap.num_pairs) == 0 and y.coords.shape == (capacity, 4) and int(y.num_valid) == 0
  w = jnp.ones((2, 2, 2, 3, 2), jnp.float32)
  outs = [js.ops.conv3d(x, w, stride=2), js.ops.max_pool(x, 2, stride=2), js.ops.avg_pool(x, 2, stride=2),
          js.ops.conv3d(x, w, stride=2, capacity=4)]
  outs.append(js.ops.conv_transpose3d(outs[0], jnp.ones((2, 2, 2, 2, 3), jnp.float32)))
  for y in outs:
    js.raise_if_error(y)
    assert int(y.num_valid) == 0 and not np.asarray(y.feats).any()


def test_padding_never_influences_valid_rows(rng):
  x = random_tensor(rng, capacity_extra=0)
  bigger = js.SparseTensor.from_coords(*valid_part(x), capacity=x.capacity + 37)
  bigger = bigger.replace(feats=bigger.feats.astype(jnp.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 4)).astype(np.float32))
  a, b = js.ops.conv3d(x, w), js.ops.conv3d(bigger, w)
  n = int(x.num_valid)
  np.testing.assert_allclose(a.feats[:n], b.feats[:n], rtol=0, atol=1e-6)
  assert not np.asarray(b.feats[n:]).any()


def test_bad_inputs_raise_before_computing(rng):
  x = random_tensor(rng)
  w = jnp.ones((3, 3, 3, 3, 2), jnp.float32)
  with pytest.raises(ValueError, match="channel mismatch"):
    js.ops.conv3d(x, jnp.ones((3, 3, 3, 4, 2)))
  with pytest.raises(ValueError, match=r"\[kx, ky, kz, C_in, C_out\]"):
    js.ops.conv3d(x, jnp.ones((3, 3, 3, 2)))
  with pytest.raises(TypeError, match="dtype"):
    js.ops.conv3d(x, w.astype(jnp.bfloat16))
  with pytest.raises(ValueError, match="kernel size"):
    js.ops.conv3d(x, jnp.ones((8, 3, 3, 3, 2)))
  with pytest.raises(ValueError, match="stride"):
    js.ops.conv3d(x, w, stride=5)
  with pytest.raises(ValueError, match="dilation"):
    js.ops.conv3d(x, w, dilation=4)
  with pytest.raises(ValueError, match="bias"):
    js.ops.conv3d(x, w, bias=jnp.ones(3))
  with pytest.raises(ValueError, match="implementation"):
    js.ops.conv3d(x, w, implementation="cuda")
  with pytest.raises(TypeError, match="SparseTensor"):
    js.ops.conv3d(x.feats, w)
  with pytest.raises(ValueError, match="does not divide"):
    js.ops.conv_transpose3d(x, w)
  coarse = js.SparseTensor.from_coords(np.array([[0, 2, 2, 2]]), np.ones((1, 3), np.float32), stride=2)
  with pytest.raises(ValueError, match="target="):
    js.ops.conv_transpose3d(coarse, w)
  y = js.ops.conv3d(x, w[:2, :2, :2], stride=2)
  with pytest.raises(ValueError, match="stride"):
    js.ops.conv_transpose3d(y, jnp.ones((2, 2, 2, 2, 3)), stride=4)
  with pytest.raises(ValueError, match="target has stride"):
    js.ops.conv_transpose3d(y, jnp.ones((2, 2, 2, 2, 3)), target=y)


def test_conv_at_the_edges_of_the_coordinate_range(rng):
  from jsparse3d import _coords
  lo, hi = _coords.COORD_MIN, _coords.COORD_MAX
  corner = np.array([[_coords.MAX_BATCH, hi, hi, hi], [_coords.MAX_BATCH, hi - 1, hi, hi], [0, lo, lo, lo],
                     [0, lo + 1, lo, lo + 1], [0, lo, lo + 1, lo], [7, 0, hi, lo], [7, 0, hi - 1, lo]])
  feats = rng.standard_normal((len(corner), 2)).astype(np.float32)
  x = js.SparseTensor.from_coords(corner, feats, capacity=10)
  cin, fin = valid_part(x)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 2, 3)).astype(np.float32))
  # Neighbours beyond the range do not exist (and never alias to the other end).
  assert_close(valid_part(js.ops.conv3d(x, w))[1], np_conv(cin, fin, w, cin, dilation=(1, 1, 1)), jnp.float32, 54)
  y = js.ops.conv3d(x, w, stride=2)
  cout, got = valid_part(y)
  np.testing.assert_array_equal(cout[np.lexsort(cout.T[::-1])], np_downsample(cin, (2, 2, 2)))
  assert_close(got, np_conv(cin, fin, w, cout, dilation=(1, 1, 1)), jnp.float32, 54)
  z = js.ops.conv_transpose3d(y, jnp.swapaxes(w, 3, 4))
  assert z.coords is x.coords


def test_a_precomputed_kmap_gives_the_same_conv_and_keeps_map_building_out_of_jit(rng):
  x = random_tensor(rng, n_grid=10, density=0.3, channels=3, batch=2)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 4)).astype(np.float32))
  w2 = jnp.asarray(rng.standard_normal((2, 2, 2, 3, 4)).astype(np.float32))
  sub = js.ops.kernel_map(x, 3)
  down = js.ops.kernel_map(x, 2, stride=2)
  bare = x.without_cache()
  assert bare.cache == {} and bare.coords is x.coords

  def f(x, sub, down):
    return js.ops.conv3d(x, w, kmap=sub[0]).feats, js.ops.conv3d(x, w2, stride=2, kmap=down).without_cache()

  a, b = jax.jit(f)(bare, sub, down)
  np.testing.assert_array_equal(a, js.ops.conv3d(x, w).feats)
  ref = js.ops.conv3d(x, w2, stride=2)
  np.testing.assert_array_equal(b.feats, ref.feats)
  np.testing.assert_array_equal(b.coords, ref.coords)
  assert b.cache == {}
  jaxpr = str(jax.make_jaxpr(f)(bare, sub, down))
  assert "query_map" not in jaxpr and "downsample" not in jaxpr  # no map is built inside
  with pytest.raises(ValueError, match=r"kmap was built for kernel \(3, 3, 3\)"):
    js.ops.conv3d(x, w2, stride=2, kmap=sub)
  with pytest.raises(ValueError, match="needs the output geometry"):
    js.ops.conv3d(x, w2, stride=2, kmap=down[0])


def _dense_padded(grid, w, stride, dilation, padding):
  return jax.lax.conv_general_dilated(grid, w, (stride,) * 3, [(padding, padding)] * 3, rhs_dilation=(dilation,) * 3,
                                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("k, s, p, d", [(3, 2, 1, 1), (3, 2, 0, 1), (2, 2, 0, 1), (3, 1, 1, 1), (3, 2, 2, 2),
                                        (5, 3, 1, 1)])
def test_padded_conv_has_the_dense_convolutions_sites_and_values(rng, impl, k, s, p, d):
  # spconv's SparseConv3d(k, s, p): every dense output position whose receptive field holds an active input.
  margin, g = (k - 1) * d, 10
  size = g + 2 * (k - 1) * d
  x = random_tensor(rng, n_grid=g, density=0.15, channels=3, batch=2, offset=(margin,) * 3)
  w = jnp.asarray(rng.standard_normal((k, k, k, 3, 4)).astype(np.float32))
  y = js.ops.conv3d(x, w, stride=s, dilation=d, padding=p, capacity=4000)
  js.raise_if_error(y)
  assert y.stride == (s,) * 3
  cin, fin = valid_part(x)
  grid = jnp.zeros((2, size, size, size, 3)).at[cin[:, 0], cin[:, 1], cin[:, 2], cin[:, 3]].set(fin)
  dense = _dense_padded(grid, w, s, d, p)
  reached = np.argwhere(np.asarray(_dense_padded((grid != 0).any(-1, keepdims=True).astype(jnp.float32),
                                                 jnp.ones((k, k, k, 1, 1)), s, d, p))[..., 0] > 0)
  cout, got = valid_part(y)
  q = np.c_[cout[:, :1], cout[:, 1:] // s]
  np.testing.assert_array_equal(cout[:, 1:] % s, 0)
  np.testing.assert_array_equal(q, reached)  # the same sites, in (batch, x, y, z) order
  assert_close(got, dense[q[:, 0], q[:, 1], q[:, 2], q[:, 3]], jnp.float32, k ** 3 * 3)
  # the gradient and the transposed conv with the same padding: both adjoints of the dense conv
  r = jnp.asarray(rng.standard_normal(got.shape).astype(np.float32))
  rows = jnp.zeros(y.feats.shape).at[:len(r)].set(r)
  g_sparse = jax.grad(lambda f: jnp.vdot(js.ops.conv3d(x.replace(feats=f), w, stride=s, dilation=d, padding=p,
                                                       capacity=4000).feats, rows))(x.feats)
  ct = jnp.zeros(dense.shape).at[q[:, 0], q[:, 1], q[:, 2], q[:, 3]].set(r)
  g_dense = jax.vjp(lambda g: _dense_padded(g, w, s, d, p), grid)[1](ct)[0]
  want = g_dense[cin[:, 0], cin[:, 1], cin[:, 2], cin[:, 3]]
  assert_close(g_sparse[:len(cin)], want, jnp.float32, k ** 3 * 4)
  tangent = jnp.where(x.valid_mask[:, None], jnp.asarray(rng.standard_normal(x.feats.shape), jnp.float32), 0.0)
  conv = lambda f: js.ops.conv3d(x.replace(feats=f), w, stride=s, dilation=d, padding=p, capacity=4000).feats
  _, jvp = jax.jvp(conv, (x.feats,), (tangent,))
  t_grid = jnp.zeros((2, size, size, size, 3)).at[cin[:, 0], cin[:, 1], cin[:, 2], cin[:, 3]].set(
      tangent[:len(cin)])
  assert_close(jvp[:len(q)], _dense_padded(t_grid, w, s, d, p)[q[:, 0], q[:, 1], q[:, 2], q[:, 3]], jnp.float32,
               k ** 3 * 3)
  back = js.ops.conv_transpose3d(y.replace(feats=rows), jnp.swapaxes(w, 3, 4), stride=s, dilation=d, padding=p)
  assert back.coords is x.coords
  assert_close(back.feats[:len(cin)], want, jnp.float32, k ** 3 * 4)


@pytest.mark.parametrize("k, s, p", [(2, 2, None), (3, 2, None), (3, 2, 1), (3, 1, None)])
def test_generative_transposed_conv_makes_every_reached_site(rng, impl, k, s, p):
  g, margin = 6, 2 * k
  coarse = random_tensor(rng, n_grid=g, density=0.2, channels=4, batch=2, offset=(margin,) * 3)
  c, f = valid_part(coarse)
  y = js.SparseTensor.from_coords(c * [1, s, s, s], f, stride=s)  # a stride-s tensor
  w = jnp.asarray(rng.standard_normal((k, k, k, 4, 3)).astype(np.float32))
  out = js.ops.conv_transpose3d(y, w, stride=s, padding=p, generative=True, capacity=3000)
  js.raise_if_error(out)
  assert out.stride == (1, 1, 1)
  pad = (k - 1) // 2 if p is None else p
  offs = np.array(list(itertools.product(range(k), repeat=3))) - pad
  cy = np.asarray(valid_part(y)[0])
  want_sites = np.unique(np.concatenate([np.c_[cy[:, :1], cy[:, 1:] + o] for o in offs]), axis=0)
  cout, got = valid_part(out)
  np.testing.assert_array_equal(cout, want_sites)
  # values: the adjoint (vjp) of the dense strided conv with this padding, read at the reached sites
  size = (g + 2 * margin) * s + 2 * k
  wd = jnp.swapaxes(w, 3, 4)
  zero = jnp.zeros((2, size, size, size, 3))
  dense_out = jax.eval_shape(lambda v: _dense_padded(v, wd, s, 1, pad), zero).shape
  ct = jnp.zeros(dense_out).at[cy[:, 0], cy[:, 1] // s, cy[:, 2] // s, cy[:, 3] // s].set(valid_part(y)[1])
  fine = jax.vjp(lambda v: _dense_padded(v, wd, s, 1, pad), zero)[1](ct)[0]
  assert_close(got, fine[cout[:, 0], cout[:, 1], cout[:, 2], cout[:, 3]], jnp.float32, k ** 3 * 4)
  small = lambda y: js.ops.conv_transpose3d(y, w, stride=s, padding=p, generative=True,
                                             capacity=len(want_sites) - 1)
  with pytest.raises(ValueError, match="capacity overflow"):
    small(y)  # eagerly at once
  with pytest.raises(ValueError, match="capacity overflow"):
    js.raise_if_error(jax.jit(small)(y))  # under jit: flagged on the result
  with pytest.raises(ValueError, match="needs capacity="):
    js.ops.conv_transpose3d(y, w, stride=s, generative=True)
