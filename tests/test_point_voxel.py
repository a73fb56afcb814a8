"""Point <-> voxel ops against brute-force numpy, values and gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js


def _points(rng, p=60, pad=8, extent=5.0):
  xyz = rng.uniform(0, extent, (p + pad, 3)).astype(np.float32)
  batch = np.r_[rng.integers(0, 2, p), -np.ones(pad, int)].astype(np.int32)
  feats = rng.standard_normal((p + pad, 3)).astype(np.float32) * (batch >= 0)[:, None]
  return xyz, batch, feats


def _np_voxel_means(xyz, batch, feats, stride=1):
  keys = {}
  for i in np.flatnonzero(batch >= 0):
    k = (int(batch[i]), *(int(v) for v in np.floor(xyz[i] / stride).astype(int) * stride))
    keys.setdefault(k, []).append(feats[i])
  return {k: np.mean(v, axis=0) for k, v in keys.items()}


def test_voxelize_averages_points_per_voxel(rng):
  xyz, batch, feats = _points(rng)
  x, row = js.ops.voxelize(jnp.asarray(xyz), jnp.asarray(batch), jnp.asarray(feats))
  want = _np_voxel_means(xyz, batch, feats)
  n = int(x.num_valid)
  assert n == len(want)
  coords, got = np.asarray(x.coords), np.asarray(x.feats)
  for r in range(n):
    np.testing.assert_allclose(got[r], want[tuple(coords[r])], rtol=1e-6, atol=1e-6)
  assert (np.asarray(row)[batch < 0] == -1).all()
  np.testing.assert_array_equal(coords[np.asarray(row)[batch >= 0], 1:],
                                np.floor(xyz[batch >= 0]).astype(int))
  assert not got[n:].any() and (coords[n:, 0] == -1).all()


def _np_trilinear(coords, vals, stride, xyz, batch):
  table = {tuple(c): v for c, v in zip(coords.tolist(), vals)}
  out = np.zeros((len(xyz), vals.shape[1]))
  for i, (p, b) in enumerate(zip(xyz / stride, batch)):
    if b < 0:
      continue
    base, frac = np.floor(p), p - np.floor(p)
    acc, wsum = 0.0, 0.0
    for corner in itertools.product((0, 1), repeat=3):
      key = (int(b), *(int(v) for v in (base + corner).astype(int) * stride))
      if key in table:
        w = np.prod([f if c else 1 - f for f, c in zip(frac, corner)])
        acc, wsum = acc + w * table[key], wsum + w
    out[i] = acc / wsum if wsum > 0 else 0.0
  return out


def test_voxel_to_point_is_renormalised_trilinear(rng):
  xyz, batch, feats = _points(rng, p=80, extent=8.0)
  x, _ = js.ops.voxelize(jnp.asarray(xyz), jnp.asarray(batch), jnp.asarray(feats))
  for stride in (1, 2):
    t = x if stride == 1 else js.ops.max_pool(x, 2, 2)
    n = int(t.num_valid)
    got = np.asarray(js.ops.voxel_to_point(t, jnp.asarray(xyz), jnp.asarray(batch)))
    want = _np_trilinear(np.asarray(t.coords)[:n], np.asarray(t.feats)[:n], stride, xyz, batch)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_point_to_voxel_and_gradients_are_the_transposes(rng):
  xyz, batch, feats = _points(rng)
  x, _ = js.ops.voxelize(jnp.asarray(xyz), jnp.asarray(batch), jnp.asarray(feats))
  coarse = js.ops.max_pool(x, 2, 2)
  want = _np_voxel_means(xyz, batch, feats, stride=2)
  got = js.ops.point_to_voxel(coarse, jnp.asarray(xyz), jnp.asarray(batch), jnp.asarray(feats))
  for r in range(int(coarse.num_valid)):
    np.testing.assert_allclose(np.asarray(got.feats)[r], want[tuple(np.asarray(coarse.coords)[r])], atol=1e-6)
  # Both ops are linear in the features: their gradients are the transposed maps (checked through a probe).
  probe_v = jnp.asarray(rng.standard_normal(got.feats.shape).astype(np.float32))
  f = lambda fe: jnp.vdot(js.ops.point_to_voxel(coarse, jnp.asarray(xyz), jnp.asarray(batch), fe).feats, probe_v)
  g = jax.grad(f)(jnp.asarray(feats))
  eps = 1e-2
  for i in rng.choice(np.flatnonzero(batch >= 0), 5, replace=False):
    d = np.zeros_like(feats)
    d[i, 1] = eps
    fd = (f(jnp.asarray(feats + d)) - f(jnp.asarray(feats - d))) / (2 * eps)
    assert abs(float(fd) - float(g[i, 1])) < 1e-3
  probe_p = jnp.asarray(rng.standard_normal((len(xyz), 3)).astype(np.float32))
  h = lambda fe: jnp.vdot(js.ops.voxel_to_point(x.replace(feats=fe), jnp.asarray(xyz), jnp.asarray(batch)), probe_p)
  gh = jax.grad(h)(x.feats)
  for r in range(3):
    d = jnp.zeros_like(x.feats).at[r, 0].set(eps)
    fd = (h(x.feats + d) - h(x.feats - d)) / (2 * eps)
    assert abs(float(fd) - float(gh[r, 0])) < 1e-3


def test_dense_voxelize_and_devoxelize_match_numpy(rng):
  b, n, r = 2, 40, 4
  feats = rng.standard_normal((b, n, 3)).astype(np.float32)
  xyz = rng.uniform(-1, 1, (b, n, 3)).astype(np.float32)
  coords, vox = js.ops.normalize_dense_coords(jnp.asarray(xyz), r)
  grid = np.asarray(js.ops.avg_voxelize_dense(jnp.asarray(feats), vox, r))
  vox = np.asarray(vox)
  for bi in range(b):
    for cell in {tuple(v) for v in vox[bi].tolist()}:
      m = (vox[bi] == cell).all(axis=1)
      np.testing.assert_allclose(grid[bi][cell], feats[bi][m].mean(axis=0), rtol=1e-6, atol=1e-6)
  out = np.asarray(js.ops.trilinear_devoxelize_dense(jnp.asarray(grid), coords))
  c = np.asarray(coords)
  for bi, i in [(0, 0), (1, 7), (1, 33)]:
    lo = np.clip(np.floor(c[bi, i]), 0, r - 1).astype(int)
    frac = c[bi, i] - lo
    want = 0
    for corner in itertools.product((0, 1), repeat=3):
      idx = np.minimum(lo + corner, r - 1)
      want = want + np.prod([f if k else 1 - f for f, k in zip(frac, corner)]) * grid[bi][tuple(idx)]
    np.testing.assert_allclose(out[bi, i], want, rtol=1e-5, atol=1e-6)


def test_native_lookups_equal_the_xla_hash_index(rng):
  # On CPU the point-voxel lookups run in the native kernels; the XLA hash index is their oracle, row for row,
  # queries that are absent, padding (batch -1) or out of range included.
  from jsparse3d import _errors
  from jsparse3d.ops import _backend
  from jsparse3d.ops import _hash
  from jsparse3d.ops import _kernel_map
  if _backend.resolve("voxel_to_point", None) != "native":
    pytest.skip("the native CPU kernels are not built here")
  coords = np.unique(np.c_[rng.integers(0, 2, 300), rng.integers(-6, 6, (300, 3))], axis=0).astype(np.int32)
  coords = np.r_[coords, np.tile([-1, 0, 0, 0], (5, 1))].astype(np.int32)  # padded rows
  nv = len(coords) - 5
  query = np.r_[coords[:nv], np.c_[rng.integers(0, 3, 200), rng.integers(-8, 8, (200, 3))],
                [[-1, 0, 0, 0], [0, 1 << 20, 0, 0], [1024, 0, 0, 0]]].astype(np.int32)
  want = _hash.query_index(_hash.build_index(jnp.asarray(coords), nv, implementation="xla"), jnp.asarray(query))
  rows, errors = _kernel_map.query_rows_native(jnp.asarray(coords), nv, jnp.asarray(query))
  np.testing.assert_array_equal(np.asarray(rows), np.asarray(want))
  assert int(errors) == 0 and (np.asarray(rows)[:nv] == np.arange(nv)).all()
  _, dup_errors = _kernel_map.query_rows_native(jnp.asarray(np.r_[coords[:3], coords[:1]]), 4, jnp.asarray(query))
  assert int(dup_errors) & _errors.DUPLICATE_COORDS

  xyz, batch, feats = _points(rng, p=80, extent=8.0)
  xyz, batch, feats = jnp.asarray(xyz), jnp.asarray(batch), jnp.asarray(feats)
  x, _ = js.ops.voxelize(xyz, batch, feats)
  coarse = js.ops.max_pool(x, 2, 2)
  for t in (x, coarse):
    np.testing.assert_array_equal(np.asarray(js.ops.voxel_to_point(t, xyz, batch, implementation="native")),
                                  np.asarray(js.ops.voxel_to_point(t, xyz, batch, implementation="xla")))
