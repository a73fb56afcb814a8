"""SparseTensor construction, layout, validation and pytree behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js


def test_from_coords_sorts_pads_and_merges_duplicates():
  coords = np.array([[1, 5, 0, 0], [0, 2, 2, 2], [1, 5, 0, 0], [0, -3, 1, 1]])
  feats = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
  x = js.SparseTensor.from_coords(coords, feats, capacity=6)
  assert int(x.num_valid) == 3 and x.capacity == 6 and x.stride == (1, 1, 1)
  np.testing.assert_array_equal(x.coords, [[0, -3, 1, 1], [0, 2, 2, 2], [1, 5, 0, 0], [-1, 0, 0, 0],
                                           [-1, 0, 0, 0], [-1, 0, 0, 0]])
  np.testing.assert_array_equal(x.feats[:, 0], [4.0, 2.0, 4.0, 0, 0, 0])
  mean = js.SparseTensor.from_coords(coords, feats, duplicates="mean")
  np.testing.assert_array_equal(mean.feats[:, 0], [4.0, 2.0, 2.0])
  with pytest.raises(ValueError, match="more than once"):
    js.SparseTensor.from_coords(coords, feats, duplicates="error")


def test_from_coords_orders_every_batch_index():
  # Regression: the packed sort key overflowed for batch >= 512, putting those batches first.
  coords = np.array([[1023, 0, 0, 0], [512, -131072, 5, 5], [0, 131071, 0, 0], [511, 3, 3, 3], [512, 7, 0, 0]])
  x = js.SparseTensor.from_coords(coords, np.arange(5, dtype=np.float32)[:, None])
  expected = coords[np.lexsort((coords[:, 3], coords[:, 2], coords[:, 1], coords[:, 0]))]
  np.testing.assert_array_equal(x.coords, expected)
  np.testing.assert_array_equal(x.feats[:, 0], [2, 3, 1, 4, 0])


def test_from_coords_accepts_xyz_and_dtypes():
  xyz = np.array([[0, 0, 0], [1, 2, 3]], np.int16)
  for dtype in (np.float32, np.float16, jnp.bfloat16):
    x = js.SparseTensor.from_coords(xyz, np.ones((2, 4), dtype))
    assert x.feats.dtype == dtype and x.coords.dtype == jnp.int32
    np.testing.assert_array_equal(x.coords[:, 0], [0, 0])
  assert js.SparseTensor.from_coords(xyz, np.ones((2, 1))).feats.dtype == jnp.float32


@pytest.mark.parametrize("coords, feats, kwargs, exc, match", [
    (np.zeros((3, 5), int), np.zeros((3, 1), np.float32), {}, ValueError, r"\[N, 4\]"),
    (np.zeros((3, 4), np.float32), np.zeros((3, 1), np.float32), {}, TypeError, "integer voxel indices"),
    (np.zeros((3, 4), int), np.zeros((2, 1), np.float32), {}, ValueError, "one row per coordinate"),
    (np.zeros((3, 4), int), np.zeros((3,), np.float32), {}, ValueError, r"feats\[:, None\]"),
    (np.zeros((3, 4), int), np.zeros((3, 1), np.int32), {}, TypeError, "float32"),
    (np.array([[0, 0, 0, 0], [0, 1, 0, 0]]), np.zeros((2, 1), np.float32), {"capacity": 1}, ValueError,
     "capacity 1 is smaller"),
    (np.array([[-1, 0, 0, 0]]), np.zeros((1, 1), np.float32), {}, ValueError, "batch indices"),
    (np.array([[1024, 0, 0, 0]]), np.zeros((1, 1), np.float32), {}, ValueError, "batch indices"),
    (np.array([[0, 1 << 17, 0, 0]]), np.zeros((1, 1), np.float32), {}, ValueError, "spatial coordinates"),
    (np.array([[0, 1, 0, 0]]), np.zeros((1, 1), np.float32), {"stride": 2}, ValueError, "multiples of the stride"),
    (np.array([[0, 0, 0, 0]]), np.array([[np.nan]], np.float32), {}, ValueError, "check_finite=False"),
    (np.array([[0, 0, 0, 0]]), np.zeros((1, 1), np.float32), {"duplicates": "max"}, ValueError, "duplicates"),
])
def test_from_coords_rejects_bad_input(coords, feats, kwargs, exc, match):
  with pytest.raises(exc, match=match):
    js.SparseTensor.from_coords(coords, feats, **kwargs)


def test_nan_allowed_when_opted_out():
  x = js.SparseTensor.from_coords(np.zeros((1, 4), int), np.array([[np.inf]], np.float32), check_finite=False)
  assert np.isinf(x.feats[0, 0])


def test_empty_tensor():
  x = js.SparseTensor.from_coords(np.zeros((0, 4), int), np.zeros((0, 2), np.float32), capacity=4)
  assert int(x.num_valid) == 0 and x.capacity == 4
  assert (np.asarray(x.coords[:, 0]) == -1).all() and not np.asarray(x.feats).any()


def test_pytree_through_jit_keeps_static_stride():
  x = js.SparseTensor.from_coords(np.array([[0, 2, 4, 6]]), np.ones((1, 2), np.float32), stride=2, capacity=3)
  leaves, treedef = jax.tree_util.tree_flatten(x)
  assert len(leaves) == 4  # coords, feats, num_valid, errors (empty cache)
  y = jax.jit(lambda t: t.replace(feats=t.feats * 2))(x)
  assert y.stride == (2, 2, 2)
  np.testing.assert_array_equal(y.feats[0], [2.0, 2.0])


def test_replace_checks_feats():
  x = js.SparseTensor.from_coords(np.zeros((1, 4), int), np.ones((1, 2), np.float32), capacity=3)
  with pytest.raises(ValueError, match="shape"):
    x.replace(feats=jnp.ones((2, 2)))
  with pytest.raises(TypeError):
    x.replace(feats=jnp.ones((3, 2), jnp.int32))


def test_dense_places_features():
  coords = np.array([[0, 1, 2, 3], [1, 0, 0, 1]])
  x = js.SparseTensor.from_coords(coords, np.array([[1.0], [2.0]], np.float32))
  d = x.dense()
  assert d.shape == (2, 2, 3, 4, 1)
  assert d[0, 1, 2, 3, 0] == 1.0 and d[1, 0, 0, 1, 0] == 2.0 and float(d.sum()) == 3.0
