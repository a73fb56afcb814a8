"""build_index / query_index against brute-force numpy search, exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js
from jsparse3d import _coords
from jsparse3d.ops import _hash
from oracles import np_lookup


def _random_coords(rng, n, spread, batch=4):
  c = np.stack([rng.integers(0, batch, n), *(rng.integers(-spread, spread, n) for _ in range(3))], axis=1)
  return np.unique(c, axis=0).astype(np.int32)


def _check(coords, queries, num_valid=None):
  nv = len(coords) if num_valid is None else num_valid
  index = js.ops.build_index(jnp.asarray(coords), nv)
  got = np.asarray(js.ops.query_index(index, jnp.asarray(queries)))
  want = np_lookup(coords[:nv], queries)
  np.testing.assert_array_equal(got, want)
  return index


def test_index_finds_every_row_and_nothing_else(rng):
  coords = _random_coords(rng, 5000, 40)
  shifted = coords + np.array([0, 1, 0, -1], np.int32)
  queries = np.concatenate([coords, shifted, _random_coords(rng, 2000, 40)])
  _check(coords, queries)


def test_index_full_coordinate_range_and_batches(rng):
  lo, hi = _coords.COORD_MIN, _coords.COORD_MAX
  coords = np.unique(np.stack([rng.integers(0, _coords.MAX_BATCH + 1, 20000),
                               *(rng.integers(lo, hi + 1, 20000) for _ in range(3))], axis=1), axis=0)
  edges = np.array([[0, lo, lo, lo], [_coords.MAX_BATCH, hi, hi, hi], [255, 0, 0, 0], [0, -1, -1, -1]])
  coords = np.unique(np.concatenate([coords, edges]), axis=0).astype(np.int32)
  # Queries include neighbours that fall outside the range: absent, never aliased.
  near = coords[:, None, :] + np.array([[0, 1, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]])[None]
  _check(coords, np.concatenate([coords, near.reshape(-1, 4)]))


def test_overflow_level_is_exact(rng, monkeypatch):
  # Shrink the single-choice levels to 64 slots so that most keys must go to the linear-probing overflow level.
  monkeypatch.setattr(_hash, "level_sizes", lambda n: (64, 64, 64, 64, _hash._pow2(2 * n)))
  coords = _random_coords(rng, 3001, 12)  # a shape no other test compiles
  coords = coords[:3001] if len(coords) >= 3001 else coords
  index = _check(coords, np.concatenate([coords, coords + np.array([0, 0, 1, 0], np.int32)]))
  assert int(index.num_overflow) > len(coords) // 2
  dup = jnp.asarray(np.concatenate([coords, coords[:5]]))
  with pytest.raises(ValueError, match="duplicate"):
    js.ops.build_index(dup, dup.shape[0])


def test_index_ignores_rows_past_num_valid(rng):
  coords = _random_coords(rng, 300, 10)
  index = _check(coords, coords, num_valid=100)
  assert int(index.errors) == 0


def test_query_any_leading_shape_and_padding(rng):
  coords = _random_coords(rng, 200, 8)
  index = js.ops.build_index(jnp.asarray(coords), len(coords))
  q = np.concatenate([coords[:6], [[-1, 0, 0, 0], [-1, *coords[0, 1:]]]]).reshape(2, 4, 4).astype(np.int32)
  got = np.asarray(js.ops.query_index(index, jnp.asarray(q)))
  assert got.shape == (2, 4)
  np.testing.assert_array_equal(got.reshape(-1)[:6], np.arange(6))
  np.testing.assert_array_equal(got.reshape(-1)[6:], [-1, -1])


def test_index_is_deterministic_and_jittable(rng):
  coords = jnp.asarray(_random_coords(rng, 3000, 20))
  a = js.ops.build_index(coords, 3000)
  b = jax.jit(js.ops.build_index)(coords, 3000)
  for f in ("slots", "key_hi", "key_lo", "num_overflow"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_duplicates_and_out_of_range_are_flagged(rng):
  coords = jnp.array([[0, 1, 1, 1], [0, 1, 1, 1], [0, 2, 2, 2]], jnp.int32)
  with pytest.raises(ValueError, match="duplicate coordinates"):
    js.ops.build_index(coords, 3)
  index = jax.jit(js.ops.build_index)(coords, 3)  # inside jit: flagged, raised at the boundary
  with pytest.raises(ValueError, match="duplicate coordinates"):
    js.raise_if_error(index)
  # The first occurrence is stored.
  assert int(js.ops.query_index(index, coords[1])) == 0
  bad = jnp.array([[0, 1 << 17, 0, 0]], jnp.int32)
  with pytest.raises(ValueError, match="out of range"):
    js.ops.build_index(bad, 1)


def test_bad_arguments():
  with pytest.raises(TypeError, match="int32"):
    js.ops.build_index(jnp.zeros((3, 4), jnp.float32), 3)
  with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
    js.ops.build_index(jnp.zeros((3, 3), jnp.int32), 3)
  with pytest.raises(TypeError, match="HashIndex"):
    js.ops.query_index(jnp.zeros(3), jnp.zeros((1, 4), jnp.int32))


def test_index_1e5_coordinates(rng):
  coords = _random_coords(rng, 100_000, 200)
  queries = np.concatenate([coords, coords + np.array([0, 0, 1, 0], np.int32)])
  _check(coords, queries)


@pytest.mark.slow
def test_index_1e6_coordinates(rng):
  coords = _random_coords(rng, 1_000_000, 1000, batch=8)
  queries = np.concatenate([coords, coords + np.array([0, 1, 1, 0], np.int32)])
  _check(coords, queries)
