"""Kernel maps against brute-force numpy search, exactly; caching behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js
from oracles import np_downsample, np_neighbor_table, random_tensor


def _sorted_rows(c):
  return c[np.lexsort(np.asarray(c).T[::-1])]


@pytest.mark.parametrize("ks, dil", [((3, 3, 3), (1, 1, 1)), ((2, 2, 2), (1, 1, 1)), ((5, 5, 5), (2, 2, 2)),
                                     ((3, 1, 4), (1, 3, 2)), ((1, 1, 1), (1, 1, 1)), ((7, 7, 7), (1, 1, 1))])
def test_submanifold_map_matches_brute_force(rng, ks, dil):
  x = random_tensor(rng, n_grid=9, density=0.3, batch=2, offset=(-4, 3, -1))
  kmap, _ = js.ops.kernel_map(x, ks, dilation=dil)
  n = int(x.num_valid)
  coords = np.asarray(x.coords)[:n]
  table = np.asarray(kmap.neighbor_table())
  np.testing.assert_array_equal(table[:n], np_neighbor_table(coords, coords, ks, dil, (1, 1, 1)))
  assert (table[n:] == -1).all()
  assert int(kmap.num_pairs) == int((table >= 0).sum())


@pytest.mark.parametrize("ks, st", [((2, 2, 2), (2, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((1, 1, 1), (2, 2, 2)),
                                    ((2, 3, 2), (2, 3, 1)), ((4, 4, 4), (3, 3, 3))])
def test_strided_map_matches_brute_force(rng, ks, st):
  x = random_tensor(rng, n_grid=10, density=0.3, batch=2, offset=(-5, 0, 7))
  kmap, y = js.ops.kernel_map(x, ks, stride=st)
  n, m = int(x.num_valid), int(y.num_valid)
  cin, cout = np.asarray(x.coords)[:n], np.asarray(y.coords)[:m]
  np.testing.assert_array_equal(_sorted_rows(cout), np_downsample(cin, st))
  assert y.stride == st
  np.testing.assert_array_equal(np.asarray(kmap.neighbor_table())[:m],
                                np_neighbor_table(cin, cout, ks, (1, 1, 1), (1, 1, 1)))
  # The output index is exact too.
  np.testing.assert_array_equal(js.ops.query_index(y.cache["index"], jnp.asarray(cout)), np.arange(m))


def test_strided_map_on_strided_tensor(rng):
  x = random_tensor(rng, n_grid=16, density=0.2)
  _, y = js.ops.kernel_map(x, 2, stride=2)
  y = y.replace(feats=jnp.zeros((y.capacity, 1)))
  kmap, z = js.ops.kernel_map(y, 3, stride=2)  # offsets scale with the input stride 2
  assert z.stride == (4, 4, 4)
  m, n = int(z.num_valid), int(y.num_valid)
  cy, cz = np.asarray(y.coords)[:n], np.asarray(z.coords)[:m]
  np.testing.assert_array_equal(np.asarray(kmap.neighbor_table())[:m],
                                np_neighbor_table(cy, cz, (3, 3, 3), (1, 1, 1), (2, 2, 2)))
  sub, _ = js.ops.kernel_map(y, 3)
  np.testing.assert_array_equal(np.asarray(sub.neighbor_table())[:n],
                                np_neighbor_table(cy, cy, (3, 3, 3), (1, 1, 1), (2, 2, 2)))


def test_maps_are_cached_and_reused(rng):
  x = random_tensor(rng)
  kmap, x1 = js.ops.kernel_map(x, 3)
  assert "index" in x1.cache and "subm/k3x3x3/d1x1x1" in x1.cache
  again, x2 = js.ops.kernel_map(x1, 3)
  assert again is kmap and x2 is x1
  w = jnp.ones((3, 3, 3, 3, 2), jnp.float32)
  y = js.ops.conv3d(x1, w)
  assert y.cache["subm/k3x3x3/d1x1x1"] is kmap
  _, coarse = js.ops.kernel_map(y, 2, stride=2)
  assert coarse.cache["parent"].coords is y.coords and "down/k2x2x2/s2x2x2/d1x1x1" in coarse.cache


def test_transposed_map_is_the_swap(rng):
  x = random_tensor(rng, n_grid=8)
  kmap, y = js.ops.kernel_map(x, 2, stride=2)
  t = np.asarray(kmap.T.neighbor_table())  # [N_fine, K]: coarse row of each fine row
  table = np.asarray(kmap.neighbor_table())
  fine_from_coarse = {(int(c), k): int(f) for c, row in enumerate(table) for k, f in enumerate(row) if f >= 0}
  coarse_from_fine = {(int(f), k): int(c) for f, row in enumerate(t) for k, c in enumerate(row) if c >= 0}
  assert {(v, k): c for (c, k), v in fine_from_coarse.items()} == coarse_from_fine


def test_map_build_is_deterministic_under_jit(rng):
  x = random_tensor(rng, n_grid=12, density=0.3)
  build = jax.jit(lambda t: js.ops.kernel_map(t, 3)[0])
  a, b = build(x), js.ops.kernel_map(x, 3)[0]
  for f in ("src", "dst", "block_offset", "num_blocks", "num_pairs"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def _big_tensor(rng, n, spread):
  c = np.unique(np.stack([rng.integers(0, 2, n), *(rng.integers(0, spread, n) for _ in range(3))], 1), axis=0)
  return js.SparseTensor.from_coords(c.astype(np.int32), np.zeros((len(c), 1), np.float32))


def test_map_1e5_coordinates(rng):
  x = _big_tensor(rng, 100_000, 64)
  kmap, _ = js.ops.kernel_map(x, 3)
  c = np.asarray(x.coords)
  np.testing.assert_array_equal(np.asarray(kmap.neighbor_table()), np_neighbor_table(c, c, (3,) * 3, (1,) * 3, (1,) * 3))


@pytest.mark.slow
def test_map_1e6_coordinates(rng):
  x = _big_tensor(rng, 1_000_000, 160)
  kmap, y = js.ops.kernel_map(x, 3)
  c = np.asarray(x.coords)
  np.testing.assert_array_equal(np.asarray(kmap.neighbor_table()), np_neighbor_table(c, c, (3,) * 3, (1,) * 3, (1,) * 3))
  down, y = js.ops.kernel_map(x, 2, stride=2)
  m = int(y.num_valid)
  cy = np.asarray(y.coords)[:m]
  np.testing.assert_array_equal(_sorted_rows(cy), np_downsample(c, (2, 2, 2)))
  np.testing.assert_array_equal(np.asarray(down.neighbor_table())[:m],
                                np_neighbor_table(c, cy, (2,) * 3, (1,) * 3, (1,) * 3))
