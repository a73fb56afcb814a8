"""Kernel maps against brute-force numpy search, exactly; caching behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js
from oracles import np_downsample
from oracles import np_neighbor_table
from oracles import random_tensor


def _sorted_rows(c):
  return c[np.lexsort(np.asarray(c).T[::-1])]


@pytest.mark.parametrize("implementation", ["xla", "native"])
@pytest.mark.parametrize("ks, dil", [((3, 3, 3), (1, 1, 1)), ((2, 2, 2), (1, 1, 1)), ((5, 5, 5), (2, 2, 2)),
                                     ((3, 1, 4), (1, 3, 2)), ((1, 1, 1), (1, 1, 1)), ((7, 7, 7), (1, 1, 1))])
def test_submanifold_map_matches_brute_force(rng, ks, dil, implementation):
  x = random_tensor(rng, n_grid=9, density=0.3, batch=2, offset=(-4, 3, -1))
  kmap, _ = js.ops.kernel_map(x, ks, dilation=dil, implementation=implementation)
  n = int(x.num_valid)
  coords = np.asarray(x.coords)[:n]
  table = np.asarray(kmap.neighbor_table())
  np.testing.assert_array_equal(table[:n], np_neighbor_table(coords, coords, ks, dil, (1, 1, 1)))
  assert (table[n:] == -1).all()
  assert int(kmap.num_pairs) == int((table >= 0).sum())


@pytest.mark.parametrize("implementation", ["xla", "native"])
@pytest.mark.parametrize("ks, st", [((2, 2, 2), (2, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((1, 1, 1), (2, 2, 2)),
                                    ((2, 3, 2), (2, 3, 1)), ((4, 4, 4), (3, 3, 3))])
def test_strided_map_matches_brute_force(rng, ks, st, implementation):
  x = random_tensor(rng, n_grid=10, density=0.3, batch=2, offset=(-5, 0, 7))
  kmap, y = js.ops.kernel_map(x, ks, stride=st, implementation=implementation)
  n, m = int(x.num_valid), int(y.num_valid)
  cin, cout = np.asarray(x.coords)[:n], np.asarray(y.coords)[:m]
  np.testing.assert_array_equal(_sorted_rows(cout), np_downsample(cin, st))
  assert y.stride == st
  np.testing.assert_array_equal(np.asarray(kmap.neighbor_table())[:m],
                                np_neighbor_table(cin, cout, ks, (1, 1, 1), (1, 1, 1)))
  # The output index (made with the coordinates on the XLA path, built when first needed on the native one) is
  # exact too.
  assert ("index" in y.cache) == (implementation == "xla")
  index, _ = js.ops.ensure_index(y)
  np.testing.assert_array_equal(js.ops.query_index(index, jnp.asarray(cout)), np.arange(m))


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
  assert "subm/k3x3x3/d1x1x1" in x1.cache
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


@pytest.mark.parametrize("ks, st, padding", [(3, 1, None), (5, 1, None), (2, 2, None), (3, 2, None), (3, 2, 1)])
def test_carried_tables_match_brute_force_in_both_directions(rng, ks, st, padding):
  x = random_tensor(rng, n_grid=8, density=0.3, batch=2)
  kmap, y = js.ops.kernel_map(x, ks, stride=st, padding=padding)
  assert kmap.table is None  # on the CPU backend no convolution reads them
  n, m = int(x.num_valid), int(y.num_valid)
  cin, cout = np.asarray(x.coords)[:n], np.asarray(y.coords)[:m]
  want = np_neighbor_table(cin, cout, (ks,) * 3, (1, 1, 1), (1, 1, 1))  # k3 p1 has the centred offsets too
  want_t = np.full((n, ks ** 3), -1)  # the transposed map's table, by inverting the brute-force one
  for r, row in enumerate(want):
    for k, i in enumerate(row):
      if i >= 0:
        want_t[i, k] = r
  carried = kmap.with_tables()
  assert carried.with_tables() is carried
  np.testing.assert_array_equal(np.asarray(carried.table)[:m], want)
  np.testing.assert_array_equal(np.asarray(carried.table_t)[:n], want_t)
  assert (np.asarray(carried.table)[m:] == -1).all() and (np.asarray(carried.table_t)[n:] == -1).all()
  np.testing.assert_array_equal(carried.T.neighbor_table(), carried.table_t)  # .T swaps the tables
  np.testing.assert_array_equal(carried.T.table_t, carried.table)


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
  want = np_neighbor_table(c, c, (3,) * 3, (1,) * 3, (1,) * 3)
  np.testing.assert_array_equal(np.asarray(kmap.neighbor_table()), want)


@pytest.mark.slow
def test_map_1e6_coordinates(rng):
  x = _big_tensor(rng, 1_000_000, 160)
  kmap, y = js.ops.kernel_map(x, 3)
  c = np.asarray(x.coords)
  want = np_neighbor_table(c, c, (3,) * 3, (1,) * 3, (1,) * 3)
  np.testing.assert_array_equal(np.asarray(kmap.neighbor_table()), want)
  down, y = js.ops.kernel_map(x, 2, stride=2)
  m = int(y.num_valid)
  cy = np.asarray(y.coords)[:m]
  np.testing.assert_array_equal(_sorted_rows(cy), np_downsample(c, (2, 2, 2)))
  np.testing.assert_array_equal(np.asarray(down.neighbor_table())[:m],
                                np_neighbor_table(c, cy, (2,) * 3, (1,) * 3, (1,) * 3))


_MAP_FIELDS = ("src", "dst", "block_offset", "num_blocks", "num_pairs", "center_mask")


@pytest.mark.parametrize("ks, st, dil", [((3, 3, 3), (1, 1, 1), (1, 1, 1)), ((2, 2, 2), (1, 1, 1), (1, 1, 1)),
                                         ((3, 1, 5), (1, 1, 1), (2, 1, 1)), ((2, 2, 2), (2, 2, 2), (1, 1, 1)),
                                         ((3, 3, 3), (2, 2, 2), (1, 1, 1)), ((3, 3, 3), (3, 2, 4), (2, 1, 1))])
def test_native_and_xla_maps_are_equal_array_for_array(rng, ks, st, dil):
  # The native kernels must reproduce the XLA path's arrays exactly (pairs, positions, padding), so that either
  # builder serves either conv implementation, and a strided tensor's coordinates do not depend on the builder.
  x = random_tensor(rng, n_grid=12, density=0.25, batch=3, offset=(-6, 2, -3))
  a, ya = js.ops.kernel_map(x, ks, stride=st, dilation=dil, implementation="xla")
  b, yb = js.ops.kernel_map(x, ks, stride=st, dilation=dil, implementation="native")
  for field in _MAP_FIELDS:
    np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), err_msg=field)
  assert (a.block_size, a.blocks_per_step, a.center, a.mirrored) == (b.block_size, b.blocks_per_step, b.center,
                                                                      b.mirrored)
  np.testing.assert_array_equal(np.asarray(ya.coords), np.asarray(yb.coords))
  assert int(ya.num_valid) == int(yb.num_valid)


@pytest.mark.parametrize("implementation", ["xla", "native"])
def test_duplicate_coordinates_are_flagged_by_either_builder(implementation):
  # SparseTensor.from_coords merges duplicates; a tensor built by hand may not, and the map build must say so.
  coords = np.array([[0, 1, 1, 1], [0, 1, 1, 2], [0, 1, 1, 1], [-1, 0, 0, 0]], np.int32)
  x = js.SparseTensor(jnp.asarray(coords), jnp.ones((4, 1)), jnp.asarray(3, jnp.int32),
                      js.SparseTensor.from_coords(coords[:1], np.ones((1, 1))).errors, {}, (1, 1, 1))
  for stride in (1, 2):
    with pytest.raises(ValueError, match="more than once|duplicate"):
      js.ops.kernel_map(x, 3, stride=stride, implementation=implementation)
    build = lambda x, stride=stride: js.ops.kernel_map(x, 3, stride=stride, implementation=implementation)[1]
    traced = jax.jit(build)(x)
    with pytest.raises(ValueError, match="more than once|duplicate"):
      js.raise_if_error(traced)


def test_planned_capacities_are_exact_cell_counts_in_buckets(rng):
  x = random_tensor(rng, n_grid=24, density=0.05, batch=3, offset=(-7, 0, 5))
  buckets = tuple(16 * 2 ** k for k in range(12))
  planned = x.plan_capacities((2, 4), buckets=buckets)
  c = np.asarray(x.coords)[:int(x.num_valid)]
  for (stride, cap), s in zip(planned.capacities, (2, 4)):
    cells = len(np_downsample(c, (s, s, s)))
    assert stride == (s, s, s) and cap >= cells and cap == min(x.capacity, next(b for b in buckets if b >= cells))
  with pytest.raises(ValueError, match="coarser multiple"):
    x.plan_capacities((1,))


@pytest.mark.parametrize("implementation", ["xla", "native"])
def test_planned_capacity_gives_the_same_level_with_less_padding(rng, implementation):
  x = random_tensor(rng, n_grid=20, density=0.2, batch=2)
  planned = x.plan_capacities((2, 4))
  w = jnp.asarray(rng.standard_normal((2, 2, 2, x.num_channels, 3)), jnp.float32)
  for stride in (2, 4):
    a = js.ops.conv3d(x, w, stride=stride, implementation=None)
    kmap, b = js.ops.kernel_map(planned, 2, stride=stride, implementation=implementation)
    b = js.ops.conv3d(planned, w, stride=stride)
    n = int(a.num_valid)
    assert b.capacity == planned.planned_capacity(stride) < a.capacity and int(b.num_valid) == n
    np.testing.assert_array_equal(np.asarray(a.coords)[:n], np.asarray(b.coords)[:n])
    np.testing.assert_allclose(np.asarray(a.feats)[:n], np.asarray(b.feats)[:n], rtol=1e-6, atol=1e-6)
    assert (np.asarray(b.feats)[n:] == 0).all() and (np.asarray(b.coords)[n:, 0] == -1).all()
    # The plan travels down the levels and back up through the transposed conv.
    up = js.ops.conv_transpose3d(b, jnp.ones((2, 2, 2, 3, 1), jnp.float32), stride=stride)
    assert up.capacity == x.capacity and up.capacities == planned.capacities


@pytest.mark.parametrize("implementation", [pytest.param("xla", marks=pytest.mark.slow), "native"])  # xla: 15-19 s
def test_too_small_an_output_capacity_is_flagged_not_dropped(rng, implementation):
  x = random_tensor(rng, n_grid=16, density=0.2)
  n_out = int(js.ops.kernel_map(x, 2, stride=2)[1].num_valid)
  with pytest.raises(ValueError, match="capacity overflow"):
    js.ops.kernel_map(x, 2, stride=2, capacity=n_out - 1, implementation=implementation)
  y = jax.jit(lambda x: js.ops.kernel_map(x, 2, stride=2, capacity=n_out - 1, implementation=implementation)[1])(x)
  with pytest.raises(ValueError, match="capacity overflow"):
    js.raise_if_error(y)
  _, exact = js.ops.kernel_map(x, 2, stride=2, capacity=n_out, implementation=implementation)
  assert int(exact.num_valid) == n_out and int(exact.errors) == 0
