"""The pinned semantics of docs/conventions.md: offsets, key packing, the downsample rule."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from jsparse3d import _coords


def test_offsets_follow_conventions_and_weight_order():
  # docs/conventions.md: index i along an axis of size k is offset (i - (k-1)//2) * dilation * s_in, in C order
  # over (x, y, z).
  for ks, dil, s_in in [((3, 3, 3), (1, 1, 1), (1, 1, 1)), ((2, 2, 2), (1, 1, 1), (2, 2, 2)),
                        ((5, 1, 2), (2, 1, 3), (1, 4, 1)), ((4, 4, 4), (1, 1, 1), (1, 1, 1))]:
    got = _coords.kernel_offsets(ks, dil, s_in)
    want = [[(i - (k - 1) // 2) * d * s for i, k, d, s in zip(idx, ks, dil, s_in)]
            for idx in itertools.product(*[range(k) for k in ks])]
    np.testing.assert_array_equal(got, np.array(want))
  # k = 2 covers offsets 0 and 1; odd k is centred.
  np.testing.assert_array_equal(_coords.kernel_offsets((2, 1, 1), (1, 1, 1), (1, 1, 1))[:, 0], [0, 1])
  np.testing.assert_array_equal(_coords.kernel_offsets((3, 1, 1), (1, 1, 1), (1, 1, 1))[:, 0], [-1, 0, 1])


def test_symmetric_kernels_mirror_offsets():
  offs = _coords.kernel_offsets((3, 5, 3), (2, 1, 1), (1, 1, 1))
  np.testing.assert_array_equal(offs[::-1], -offs)
  assert _coords.is_symmetric((3, 5, 7)) and not _coords.is_symmetric((3, 2, 3))


def test_pack_keys_is_injective_at_range_edges():
  vals = [_coords.COORD_MIN, _coords.COORD_MIN + 1, -1, 0, 1, _coords.COORD_MAX - 1, _coords.COORD_MAX]
  batches = [0, 1, 255, _coords.MAX_BATCH]
  rows = np.array([(b, x, y, z) for b in batches for x in vals for y in vals for z in vals], np.int32)
  assert np.asarray(_coords.in_range(jnp.asarray(rows))).all()
  hi, lo = _coords.pack_keys(jnp.asarray(rows))
  keys = (np.asarray(hi).astype(np.uint64) << np.uint64(32)) | np.asarray(lo).astype(np.uint64)
  assert len(np.unique(keys)) == len(rows)
  # Order-preserving too: the packed key sorts like (batch, x, y, z).
  assert (np.argsort(keys, kind="stable") == np.lexsort(rows.T[::-1])).all()


def test_in_range_rejects_outside_and_padding():
  rows = jnp.array([[0, 0, 0, 0], [-1, 0, 0, 0], [_coords.MAX_BATCH + 1, 0, 0, 0], [0, _coords.COORD_MAX + 1, 0, 0],
                    [0, 0, _coords.COORD_MIN - 1, 0]], jnp.int32)
  np.testing.assert_array_equal(_coords.in_range(rows), [True, False, False, False, False])


def test_downsample_floors_negative_coordinates():
  c = jnp.array([[3, -1, -2, -3], [0, 5, 4, 3]], jnp.int32)
  np.testing.assert_array_equal(_coords.downsample(c, (2, 2, 4)), [[3, -2, -2, -4], [0, 4, 4, 0]])


@pytest.mark.parametrize("bad", [0, 8, (3, 3, 9)])
def test_check_conv_geometry_rejects_kernel_sizes(bad):
  with pytest.raises(ValueError, match="kernel size"):
    _coords.check_conv_geometry(_coords.as_triple(bad, "k"), (1, 1, 1), (1, 1, 1))


def test_check_conv_geometry_rejects_strides_and_dilations():
  with pytest.raises(ValueError, match="stride"):
    _coords.check_conv_geometry((3, 3, 3), (5, 1, 1), (1, 1, 1))
  with pytest.raises(ValueError, match="dilation"):
    _coords.check_conv_geometry((3, 3, 3), (1, 1, 1), (0, 1, 1))
  with pytest.raises(TypeError):
    _coords.as_triple((1, 2), "stride")
  with pytest.raises(TypeError):
    _coords.as_triple(1.5, "stride")
