"""Pallas kernels in interpret mode against their references and independent oracles (dense lax convolution,
numpy lookups, the XLA path), forward and backward, over block sizes, kernel shapes, strides and dtypes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsparse3d as js
from jsparse3d import _errors
from oracles import dense_sparse_conv
from oracles import dense_sparse_conv_transpose
from oracles import np_lookup
from oracles import random_tensor
from oracles import valid_part
from pallas_kernels.conv import api as conv_api
from pallas_kernels.conv import reference as conv_ref
from pallas_kernels.devoxelize import api as devox_api
from pallas_kernels.devoxelize import reference as devox_ref
from pallas_kernels.hash import api as hash_api
from pallas_kernels.hash import reference as hash_ref

EPS = {jnp.float32: 1.2e-7, jnp.float16: 9.8e-4, jnp.bfloat16: 7.8e-3}


def _max_rel_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max(initial=0) / max(1.0, np.abs(want).max(initial=0))


def _tol(dtype, reduction):
  """Max error relative to the oracle's largest magnitude, scaled by the reduction length."""
  return 8 * EPS[dtype] * np.sqrt(reduction) + (0 if dtype == jnp.float32 else 4 * EPS[dtype])


def _table(rng, n_out, n_in, k, density=0.3, empty_rows=()):
  nbr = np.where(rng.random((n_out, k)) < density, rng.integers(0, n_in, (n_out, k)), -1).astype(np.int32)
  nbr[list(empty_rows)] = -1  # rows that meet no input
  return jnp.asarray(nbr)


CONV_BLOCKS = [None, conv_api.BlockSizes(rows=16, out_channels=16, wgrad_splits=3, num_warps=2),
               conv_api.BlockSizes(rows=64, out_channels=32, wgrad_splits=1, num_warps=8, num_stages=3)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("blocks", CONV_BLOCKS, ids=["default", "small", "tall"])
def test_conv_kernels_match_the_reference(rng, dtype, blocks):
  n_in, n_out, k, c_in, c_out = 61, 45, 27, 5, 19  # ragged row tails, channels padded inside
  x = jnp.asarray(rng.standard_normal((n_in, c_in)), dtype)
  w = jnp.asarray(rng.standard_normal((k, c_in, c_out)), dtype)
  dy = jnp.asarray(rng.standard_normal((n_out, c_out)), dtype)
  nbr = _table(rng, n_out, n_in, k, empty_rows=(0, 7, 44))
  y = conv_api.conv_forward(x, w, nbr, block_sizes=blocks)
  assert y.dtype == dtype and y.shape == (n_out, c_out)
  assert _max_rel_error(y, conv_ref.conv_forward(x, w, nbr)) <= _tol(dtype, k * c_in)
  assert not np.asarray(y[7], np.float32).any()
  g = conv_api.conv_wgrad(x, dy, nbr, block_sizes=blocks)
  assert g.dtype == jnp.float32 and g.shape == (k, c_in, c_out)
  assert _max_rel_error(g, conv_ref.conv_wgrad(x, dy, nbr)) <= _tol(dtype, n_out)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(conv_api.conv_wgrad(x, dy, nbr, block_sizes=blocks)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_conv_kernels_tile_wide_inputs_over_input_channels(rng, dtype):
  n_in, n_out, k, c_in, c_out = 70, 50, 8, 40, 36  # C_in in three tiles of 16, C_out padded to 48, not 64
  blocks = conv_api.BlockSizes(rows=16, out_channels=16, in_channels=16, wgrad_splits=2)
  x = jnp.asarray(rng.standard_normal((n_in, c_in)), dtype)
  w = jnp.asarray(rng.standard_normal((k, c_in, c_out)), dtype)
  dy = jnp.asarray(rng.standard_normal((n_out, c_out)), dtype)
  nbr = _table(rng, n_out, n_in, k, empty_rows=(3,))
  y = conv_api.conv_forward(x, w, nbr, block_sizes=blocks)
  assert y.shape == (n_out, c_out)
  assert _max_rel_error(y, conv_ref.conv_forward(x, w, nbr)) <= _tol(dtype, k * c_in)
  g = conv_api.conv_wgrad(x, dy, nbr, block_sizes=blocks)
  assert g.shape == (k, c_in, c_out)
  assert _max_rel_error(g, conv_ref.conv_wgrad(x, dy, nbr)) <= _tol(dtype, n_out)


def _pairs_of(kmap):
  """The arguments of the pair-compacted kernels, from a kernel map."""
  args = (kmap.src, kmap.dst, kmap.block_offset, kmap.num_blocks, kmap.center_mask)
  return args, dict(pairs_per_block=kmap.block_size, center=kmap.center, mirrored=kmap.mirrored)


@pytest.mark.parametrize("case, dtype", [("submanifold", jnp.float32), ("submanifold", jnp.bfloat16),
                                         ("strided", jnp.float32), ("transposed", jnp.bfloat16),
                                         ("1x1x1", jnp.float32)])
def test_pair_compacted_conv_matches_the_table_kernels_and_the_reference(rng, case, dtype):
  x = random_tensor(rng, n_grid=7, density=0.3, channels=20, batch=2)
  size, stride = {"submanifold": (3, 1), "strided": (2, 2), "transposed": (2, 2), "1x1x1": (1, 1)}[case]
  kmap, y = js.ops.kernel_map(x, size, stride=stride)
  if case == "transposed":  # coarse -> fine: the strided map's pairs with the roles swapped
    kmap, x, y = kmap.T, y.replace(feats=jnp.asarray(rng.standard_normal((y.capacity, 20)), jnp.float32)), x
  assert kmap.mirrored == (case == "submanifold") and (kmap.center >= 0) == (case in ("submanifold", "1x1x1"))
  assert (kmap.src.shape[0] == 0) == (case == "1x1x1")  # only the centre's identity pairs
  k, c_in, c_out = kmap.num_offsets, 20, 36  # C_out padded to 48 inside, C_in tiled by 16
  feats = x.feats.astype(dtype)
  w = jnp.asarray(rng.standard_normal((k, c_in, c_out)) / np.sqrt(k * c_in), dtype)
  dy = jnp.asarray(rng.standard_normal((y.capacity, c_out)), dtype)
  blocks = conv_api.BlockSizes(rows=16, out_channels=16, in_channels=16)
  args, kw = _pairs_of(kmap)
  table = kmap.neighbor_table()
  got = conv_api.pairs_forward(feats, w, *args, num_out=y.capacity, block_sizes=blocks, **kw)
  assert got.dtype == dtype and got.shape == (y.capacity, c_out)
  want = conv_ref.conv_forward(feats, w, table)
  assert _max_rel_error(got, want) <= _tol(dtype, k * c_in)
  assert _max_rel_error(got, conv_api.conv_forward(feats, w, table)) <= _tol(dtype, k * c_in)
  dw = conv_api.pairs_wgrad(feats, dy, *args, num_offsets=k, block_sizes=blocks, **kw)
  assert dw.dtype == jnp.float32 and dw.shape == (k, c_in, c_out)
  assert _max_rel_error(dw, conv_ref.conv_wgrad(feats, dy, table)) <= _tol(dtype, y.capacity)
  np.testing.assert_array_equal(np.asarray(dw), np.asarray(conv_api.pairs_wgrad(  # deterministic
      feats, dy, *args, num_offsets=k, block_sizes=blocks, **kw)))
  # the input gradient is the forward on the transposed map with w[k].T
  args_t, kw_t = _pairs_of(kmap.T)
  dx = conv_api.pairs_forward(dy, jnp.swapaxes(w, 1, 2), *args_t, num_out=x.capacity, block_sizes=blocks, **kw_t)
  dx_want = jax.vjp(lambda f: conv_ref.conv_forward(f, w, table).astype(jnp.float32), feats)[1](
      dy.astype(jnp.float32))[0]
  assert _max_rel_error(dx, dx_want) <= _tol(dtype, k * c_out)


def test_pair_compacted_conv_rejects_bad_pair_lists(rng, monkeypatch):
  x = jnp.zeros((5, 3), jnp.float32)
  w = jnp.zeros((8, 3, 4), jnp.float32)
  src = jnp.zeros((64,), jnp.int32)
  with pytest.raises(ValueError, match="pairs_per_block must be a power of two"):
    conv_api.pairs_forward(x, w, src, src, jnp.zeros((2,), jnp.int32), 1, num_out=5, pairs_per_block=24)
  with pytest.raises(ValueError, match="one offset per block"):
    conv_api.pairs_forward(x, w, src, src, jnp.zeros((3,), jnp.int32), 1, num_out=5, pairs_per_block=32)
  with pytest.raises(ValueError, match="src and dst must be int32"):
    conv_api.pairs_wgrad(x, x, src, src.astype(jnp.float32), jnp.zeros((2,), jnp.int32), 1, num_offsets=8,
                         pairs_per_block=32)
  monkeypatch.setenv(conv_api.DATAFLOW_ENV, "implicit_gemm")
  with pytest.raises(ValueError, match="expected one of"):
    conv_api.dataflow(jnp.float32, 16, 16)


def test_conv_kernels_on_empty_inputs_and_bad_arguments(rng):
  x = jnp.zeros((5, 3), jnp.float32)
  w = jnp.ones((8, 3, 4), jnp.float32)
  nbr = jnp.full((6, 8), -1, jnp.int32)  # no pairs at all
  assert not np.asarray(conv_api.conv_forward(x, w, nbr)).any()
  assert not np.asarray(conv_api.conv_wgrad(x, jnp.ones((6, 4), jnp.float32), nbr)).any()
  with pytest.raises(ValueError, match="power of two"):
    conv_api.BlockSizes(rows=24)
  with pytest.raises(ValueError, match="build_rows must be a power of two"):
    hash_api.BlockSizes(build_rows=8)
  with pytest.raises(ValueError, match="num_warps"):
    devox_api.BlockSizes(num_warps=3)
  with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
    conv_api.conv_forward(x.astype(jnp.int32), w, nbr)
  with pytest.raises(ValueError, match="K=8, C_in=3"):
    conv_api.conv_forward(x, jnp.ones((8, 2, 4), jnp.float32), nbr)
  with pytest.raises(TypeError, match="cast one"):
    conv_api.conv_forward(x, w.astype(jnp.bfloat16), nbr)


@pytest.mark.parametrize("k, s, dataflow", [(3, 1, "output_stationary"), (2, 2, "output_stationary"),
                                             (3, 2, "output_stationary"), (4, 1, "output_stationary"),
                                             (3, 1, "pairs"), (3, 2, "pairs")])
def test_conv3d_with_pallas_matches_the_dense_oracle(rng, k, s, dataflow, monkeypatch):
  monkeypatch.setenv(conv_api.DATAFLOW_ENV, dataflow)
  jax.clear_caches()  # the dataflow is chosen when a convolution is traced, and jax caches traces
  calls = []
  for name in ("pairs_forward", "pairs_wgrad", "conv_forward", "conv_wgrad"):
    fn = getattr(conv_api, name)
    monkeypatch.setattr(conv_api, name, lambda *a, _fn=fn, _name=name, **kw: calls.append(_name) or _fn(*a, **kw))
  g = 7
  x = random_tensor(rng, n_grid=g, density=0.25, channels=3, batch=2)
  w = jnp.asarray(rng.standard_normal((k, k, k, 3, 4)).astype(np.float32))
  y = js.ops.conv3d(x, w, stride=s, implementation="pallas")
  cin, fin = valid_part(x)
  cout, got = valid_part(y)
  want = dense_sparse_conv(cin, jnp.asarray(fin, jnp.float32), w, cout, stride=(s,) * 3, dilation=(1,) * 3,
                           shape=(g,) * 3, batch=2)
  assert _max_rel_error(got, want) <= _tol(jnp.float32, k ** 3 * 3)
  # gradients: the Pallas input gradient (transposed table) and weight gradient against the XLA path's
  loss = lambda f, w, impl: jnp.sum(js.ops.conv3d(x.replace(feats=f), w, stride=s, implementation=impl).feats ** 2)
  for a, b in zip(jax.grad(loss, (0, 1))(x.feats, w, "pallas"), jax.grad(loss, (0, 1))(x.feats, w, "xla")):
    assert _max_rel_error(a, b) <= _tol(jnp.float32, 27 * 4 * 50)
  want_calls = {"pairs_forward", "pairs_wgrad"} if dataflow == "pairs" else {"conv_forward", "conv_wgrad"}
  assert set(calls) == want_calls  # the forward, the input gradient and the weight gradient all took that path


@pytest.mark.parametrize("stride", [1, 2])
def test_pallas_convs_read_the_tables_a_map_carries(rng, stride, monkeypatch):
  from jsparse3d.ops import _backend
  from jsparse3d.ops import _conv
  from jsparse3d.ops import _kernel_map
  monkeypatch.setenv(conv_api.DATAFLOW_ENV, "output_stationary")
  jax.clear_caches()
  x = random_tensor(rng, n_grid=7, density=0.3, channels=3, batch=2)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 4)).astype(np.float32))
  bare = js.ops.kernel_map(x, 3, stride=stride)
  # where the convolutions run on Pallas by default (a GPU), maps are built carrying their tables
  resolve = _backend.resolve
  monkeypatch.setattr(_conv._backend, "resolve", lambda op, impl, dtype=jnp.float32: (
      "pallas" if (op, impl) == ("conv", None) else resolve(op, impl, dtype)))
  carried = js.ops.kernel_map(x, 3, stride=stride)
  monkeypatch.setattr(_conv._backend, "resolve", resolve)
  assert bare[0].table is None and carried[0].table is not None and carried[0].table_t is not None
  key = "subm/k3x3x3/d1x1x1" if stride == 1 else "down/k3x3x3/s2x2x2/d1x1x1"
  assert carried[1].cache[key] is carried[0]  # cached with the map
  builds = []
  build = _kernel_map.neighbor_table
  monkeypatch.setattr(_kernel_map, "neighbor_table", lambda *a, **kw: builds.append(1) or build(*a, **kw))
  loss = lambda f, w, m: jnp.sum(js.ops.conv3d(x.replace(feats=f), w, stride=stride, kmap=m,
                                               implementation="pallas").feats ** 2)
  got = jax.value_and_grad(loss, (0, 1))(x.feats, w, carried if stride > 1 else carried[0])
  assert builds == []  # forward, input gradient and weight gradient read the carried tables
  want = jax.value_and_grad(loss, (0, 1))(x.feats, w, bare if stride > 1 else bare[0])
  assert builds  # a bare map's tables are built by the calls themselves
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


def test_transposed_conv_with_pallas_is_the_dense_adjoint(rng):
  g = 8
  fine = random_tensor(rng, n_grid=g, density=0.3, channels=2, batch=1)
  coarse = js.ops.conv3d(fine, jnp.ones((2, 2, 2, 2, 3), jnp.float32), stride=2, implementation="xla")
  w_t = jnp.asarray(rng.standard_normal((2, 2, 2, 3, 5)).astype(np.float32))
  y = js.ops.conv_transpose3d(coarse, w_t, stride=2, target=fine, implementation="pallas")
  cc, fc = valid_part(coarse)
  cf, got = valid_part(y)
  want = dense_sparse_conv_transpose(cc, jnp.asarray(fc, jnp.float32), w_t, cf, stride=(2,) * 3,
                                     shape=(g,) * 3, batch=1)
  assert _max_rel_error(got, want) <= _tol(jnp.float32, 8 * 3)


def _random_coords(rng, n, span=6, batch=3):
  c = np.concatenate([rng.integers(0, batch, (n, 1)), rng.integers(-span, span, (n, 3))], 1)
  c = np.unique(c, axis=0)
  rng.shuffle(c)
  return c.astype(np.int32)


@pytest.mark.parametrize("blocks", [hash_api.BlockSizes(), hash_api.BlockSizes(build_rows=16, query_rows=32),
                                    hash_api.BlockSizes(build_rows=64, query_rows=16, num_warps=2)],
                         ids=["default", "small", "wide"])
def test_hash_table_matches_the_reference_and_numpy(rng, blocks):
  c = _random_coords(rng, 700)
  n = len(c)
  num_valid = n - 13  # the last rows are padding
  coords = jnp.asarray(c)
  table = hash_api.build_table(coords, num_valid, block_sizes=blocks)
  assert int(table.flags) == 0 and table.capacity == hash_api.default_capacity(n)
  want_slots = hash_ref.build(coords, num_valid, table.capacity)  # ordered probing: one table for any order
  np.testing.assert_array_equal(np.asarray(table.slots[:-1]).astype(np.int32), np.asarray(want_slots))
  offsets = np.array(list(itertools.product((-1, 0, 1), repeat=3)), np.int32)
  got, errors = hash_api.query_table(table, coords, offsets, block_sizes=blocks)
  q = np.repeat(c[:, None, :], len(offsets), axis=1)
  q[:, :, 1:] += offsets[None]
  want = np_lookup(c[:num_valid], q)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert int(errors) == 0
  np.testing.assert_array_equal(np.asarray(hash_ref.query(want_slots, table.key_hi, table.key_lo, coords)),
                                want[:, 13])  # offset (0, 0, 0)


def test_hash_table_flags_bad_coordinates_and_handles_empty_sets(rng):
  c = jnp.asarray(_random_coords(rng, 100))
  dup = c.at[5].set(c[9])
  assert int(hash_api.build_table(dup, len(c)).flags) == hash_api.DUPLICATE
  far = c.at[3, 1].set(1 << 20)
  assert int(hash_api.build_table(far, len(c)).flags) == hash_api.OUT_OF_RANGE
  assert int(hash_api.build_table(far, 3).flags) == 0  # the bad row is padding
  empty = hash_api.build_table(c, 0)
  assert int(empty.flags) == 0 and (np.asarray(empty.slots) == -1).all()
  assert (np.asarray(hash_api.query_table(empty, c)[0]) == -1).all()
  with pytest.raises(ValueError, match="power of two"):
    hash_api.build_table(c, 10, capacity=100)
  with pytest.raises(TypeError, match="int32"):
    hash_api.build_table(c.astype(jnp.float32), 10)


def test_the_gpu_table_keys_follow_the_coordinate_rules(rng):
  from jsparse3d import _coords
  from pallas_kernels.hash import keys
  assert (keys.MAX_BATCH, keys.COORD_MIN, keys.COORD_MAX) == (_coords.MAX_BATCH, _coords.COORD_MIN, _coords.COORD_MAX)
  c = np.concatenate([rng.integers(-2, 1026, (400, 1)), rng.integers(-131074, 131074, (400, 3))], 1).astype(np.int32)
  c[:8] = [[0, -131072, -131072, -131072], [1023, 131071, 131071, 131071], [5, 0, 0, 0], [-1, 0, 0, 0],
           [1024, 0, 0, 0], [0, 131072, 0, 0], [0, 0, -131073, 0], [3, -1, 1, -1]]
  ok, hi, lo = keys.pack_rows(jnp.asarray(c))
  want_ok = _coords.in_range(jnp.asarray(c))
  np.testing.assert_array_equal(np.asarray(ok), np.asarray(want_ok))
  assert 50 < int(want_ok.sum()) < 400
  want_hi, want_lo = _coords.pack_keys(jnp.asarray(c))
  m = np.asarray(want_ok)
  np.testing.assert_array_equal(np.asarray(hi)[m], np.asarray(want_hi)[m])
  np.testing.assert_array_equal(np.asarray(lo)[m], np.asarray(want_lo)[m])
  # the home slot: the same hash as before the kernels owned it (their GPU timings were measured with it)
  np.testing.assert_array_equal(np.asarray(keys.home(hi, lo, 1024)),
                                np.asarray(_coords.hash_keys(hi, lo) & jnp.uint32(1023)).astype(np.int32))


def test_pallas_kernels_import_nothing_from_jsparse3d():
  code = ("import sys; import pallas_kernels.hash.api, pallas_kernels.conv.api, pallas_kernels.devoxelize.api; "
          "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'jsparse3d'); assert not bad, bad")
  import subprocess
  import sys
  subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_pallas_flags_become_jsparse3d_errors(rng):
  from jsparse3d.ops import _hash
  for bit, want in ((hash_api.OUT_OF_RANGE, _errors.OUT_OF_RANGE), (hash_api.TABLE_FULL, _errors.TABLE_FULL),
                    (hash_api.DUPLICATE, _errors.DUPLICATE_COORDS), (0, 0)):
    assert int(_hash.pallas_errors(jnp.int32(bit))) == want
  assert int(_hash.pallas_errors(jnp.int32(hash_api.OUT_OF_RANGE | hash_api.DUPLICATE))) == (
      _errors.OUT_OF_RANGE | _errors.DUPLICATE_COORDS)
  c = jnp.asarray(_random_coords(rng, 50))
  index = js.ops.build_index(c, len(c), implementation="pallas")
  assert isinstance(index, _hash.PallasIndex) and int(index.errors) == 0
  with pytest.raises(ValueError, match="out of range"):
    js.ops.build_index(c.at[2, 1].set(1 << 20), len(c), implementation="pallas")


def test_build_and_query_index_with_pallas_agree_with_xla(rng):
  c = jnp.asarray(_random_coords(rng, 300))
  pal = js.ops.build_index(c, len(c), implementation="pallas")
  xla = js.ops.build_index(c, len(c), implementation="xla")
  q = jnp.concatenate([c[:, :1], c[:, 1:] + jnp.asarray(rng.integers(-1, 2, (len(c), 3)), jnp.int32)], 1)
  q = q[:6 * (len(c) // 6)].reshape(-1, 6, 4)  # any leading shape
  np.testing.assert_array_equal(np.asarray(js.ops.query_index(pal, q)), np.asarray(js.ops.query_index(xla, q)))
  with pytest.raises(ValueError, match="duplicate"):
    js.ops.build_index(c.at[1].set(c[2]), len(c), implementation="pallas")
  with pytest.raises(ValueError, match="built with 'pallas'"):
    js.ops.query_index(pal, c, implementation="xla")


@pytest.mark.parametrize("stride, dtype, blocks", [(1, jnp.float32, None), (2, jnp.float32,
                                                   devox_api.BlockSizes(points=16, voxels=16)),
                                                   (1, jnp.bfloat16, None), (1, jnp.float16, None)])
def test_devoxelize_matches_the_xla_path_forward_and_backward(rng, stride, dtype, blocks):
  x = random_tensor(rng, n_grid=8, density=0.3, channels=5, batch=2, capacity_extra=6)
  if stride > 1:
    x = js.ops.conv3d(x, jnp.ones((2, 2, 2, 5, 5), jnp.float32) * 0.2, stride=stride, implementation="xla")
  x = x.replace(feats=x.feats.astype(dtype))
  p = 83
  xyz = jnp.asarray(rng.uniform(-0.5, 8.5, (p, 3)), jnp.float32)
  batch = jnp.asarray(rng.integers(-1, 2, p), jnp.int32)  # some padded points
  table = hash_api.build_table(x.coords, x.num_valid)
  got, errors = devox_api.devoxelize(table, x.feats, xyz, batch, stride=x.stride, block_sizes=blocks)
  assert int(errors) == 0 and got.dtype == dtype
  want = js.ops.voxel_to_point(x, xyz, batch, implementation="xla")
  assert _max_rel_error(got, want) <= _tol(dtype, 8)
  rows, w = devox_ref.corners_and_weights(table.slots[:-1], table.key_hi, table.key_lo,
                                          xyz / jnp.asarray(x.stride, jnp.float32)[None, :], batch, x.stride)
  assert _max_rel_error(got, devox_ref.devoxelize(x.feats, rows, w)) <= _tol(dtype, 8)
  assert not np.asarray(got, np.float32)[np.asarray(batch) < 0].any()
  ct = jnp.asarray(rng.standard_normal((p, 5)), dtype)
  g_pal = jax.grad(lambda f: jnp.sum((devox_api.devoxelize(table, f, xyz, batch, stride=x.stride,
                                                           block_sizes=blocks)[0] * ct).astype(jnp.float32)))
  g_xla = jax.grad(lambda f: jnp.sum((js.ops.voxel_to_point(x.replace(feats=f), xyz, batch, implementation="xla")
                                      * ct).astype(jnp.float32)))
  a, b = g_pal(x.feats), g_xla(x.feats)
  assert _max_rel_error(a, b) <= _tol(dtype, 64)
  np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(g_pal(x.feats), np.float32))  # deterministic
  via_op = js.ops.voxel_to_point(x, xyz, batch, implementation="pallas")
  np.testing.assert_array_equal(np.asarray(via_op, np.float32), np.asarray(got, np.float32))
