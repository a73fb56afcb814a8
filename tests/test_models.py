"""Layers and models: exact parameter counts, masked batch norm, padding and translation invariance, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jsparse3d as js
from jsparse3d import data
from jsparse3d import models


def _params(model) -> int:
  return sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("make, count", [
    (lambda r: models.UResNet(rngs=r), 2_741_477),
    (lambda r: models.UResNet(filters=32, rngs=r), 10_956_229),
    (lambda r: models.DenseUResNet(rngs=r), 2_741_477),
    (lambda r: models.UResNet(spatial_dims=2, rngs=r), 954_309),
    (lambda r: models.DenseUResNet(spatial_dims=2, rngs=r), 954_309),
    (lambda r: models.MinkUNet(cr=1.0, rngs=r), 21_723_315),
    (lambda r: models.MinkUNet(cr=0.64, rngs=r), 8_771_298),
    (lambda r: models.MinkUNet(cr=0.5, rngs=r), 5_435_235),
    (lambda r: models.SPVCNN(cr=1.0, rngs=r), 21_778_003),
    (lambda r: models.SPVCNN(cr=0.64, rngs=r), 8_793_617),
    (lambda r: models.SPVCNN(cr=0.5, rngs=r), 5_449_267),
    (lambda r: models.PVCNN("shapenet_part", rngs=r), 4_200_434),
    (lambda r: models.PVCNN("s3dis", rngs=r), 2_572_493),
    (lambda r: models.PointNet(rngs=r), 8_342_395),
    (lambda r: models.PointNet(transforms=False, rngs=r), 2_519_858),
])
def test_parameter_counts_match_the_published_models(make, count):
  assert _params(nnx.eval_shape(lambda: make(nnx.Rngs(0)))) == count  # shapes only: no weights are drawn


def test_masked_batch_norm_uses_valid_rows_only(rng):
  x = js.SparseTensor.from_coords(rng.integers(0, 20, (50, 3)), rng.standard_normal((50, 4)).astype(np.float32) * 3,
                                  capacity=64, duplicates="mean")
  bn = js.nn.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0))
  y = bn(x)
  n = int(x.num_valid)
  f = np.asarray(x.feats, np.float64)[:n]
  mean, var = f.mean(axis=0), f.var(axis=0)
  np.testing.assert_allclose(np.asarray(y.feats)[:n], (f - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
  assert not np.asarray(y.feats)[n:].any()
  np.testing.assert_allclose(np.asarray(bn.norm.mean[...]), 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(bn.norm.var[...]), 0.9 + 0.1 * var, rtol=1e-4)
  bn.eval()
  z = bn(x)
  np.testing.assert_allclose(np.asarray(z.feats)[:n], (f - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-5), rtol=1e-4,
                             atol=1e-4)
  with pytest.raises(ValueError, match="mask"):
    bn(x.feats)


def test_synced_batch_norm_pools_valid_rows_across_devices(rng):
  """Devices holding 3, 11, 0 and 7 valid rows normalise with the statistics of all 21 rows together."""
  counts, capacity = (3, 11, 0, 7), 16
  feats = rng.standard_normal((4, capacity, 2)).astype(np.float32) * 2 + 1
  mask = np.arange(capacity)[None, :] < np.array(counts)[:, None]
  rows = feats[mask].astype(np.float64)
  mean, var = rows.mean(axis=0), rows.var(axis=0)
  bn = js.nn.sync_batch_norm(js.nn.BatchNorm(2, rngs=nnx.Rngs(0)), "d")
  graphdef, state = nnx.split(bn)

  def run(state, f, m):
    bn = nnx.merge(graphdef, state)
    y = bn(f, mask=m)
    return y, nnx.state(bn)

  y, new_state = jax.pmap(run, axis_name="d", in_axes=(None, 0, 0))(state, feats, mask)
  want = np.where(mask[..., None], (feats - mean) / np.sqrt(var + 1e-5), 0.0)
  assert np.max(np.abs(np.asarray(y) - want)) < 1e-4
  for d in range(4):  # every device updates the running averages identically
    np.testing.assert_allclose(np.asarray(new_state["norm"]["mean"][...][d]), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new_state["norm"]["var"][...][d]), 0.9 + 0.1 * var, rtol=1e-5)
  assert js.nn.sync_batch_norm(bn, None).norm.axis_name is None


def _lartpc_batch(seeds=(0, 1), size=64):
  events = [data.synthetic_lartpc_event(s, size=size) for s in seeds]
  return data.collate(events)


def _small_uresnet(**kw):
  return models.UResNet(filters=4, depth=3, reps=1, rngs=nnx.Rngs(0), **kw)


def _with_garbage_padding(x, rng):
  noise = rng.standard_normal(x.feats.shape).astype(np.float32)
  return x.replace(feats=jnp.where(x.valid_mask[:, None], x.feats, noise))


def test_uresnet_shapes_padding_and_translation(rng):
  x, _ = _lartpc_batch()
  model = _small_uresnet()
  fwd = nnx.jit(lambda m, x: m(x).feats)
  out = fwd(model, x)
  n = int(x.num_valid)
  assert out.shape == (x.capacity, 5) and np.isfinite(np.asarray(out)).all() and not np.asarray(out)[n:].any()
  # Padded rows never influence valid outputs, in training mode (batch statistics) too.
  np.testing.assert_array_equal(np.asarray(fwd(model, _with_garbage_padding(x, rng)))[:n], np.asarray(out)[:n])
  # Translation by a multiple of the deepest stride (4) gives the same logits voxel for voxel.
  shifted = js.SparseTensor.from_coords(np.asarray(x.coords)[:n] + np.array([0, 4 * 7, -4 * 3, 4 * 11]),
                                        np.asarray(x.feats)[:n], capacity=x.capacity)
  np.testing.assert_allclose(np.asarray(fwd(model, shifted))[:n], np.asarray(out)[:n], rtol=1e-6, atol=1e-6)


def _train_steps(model, loss_fn, *args, steps=3, lr=1e-2):
  opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, *args):
    loss, grads = nnx.value_and_grad(loss_fn)(model, *args)
    opt.update(model, grads)
    return loss

  with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes Python floats and int32 counts
    losses = [float(step(model, opt, *args)) for _ in range(steps)]
  model.eval()
  final = float(nnx.jit(loss_fn)(model, *args))
  return losses, final


def _voxel_loss(model, x, y):
  logits = model(x).feats.astype(jnp.float32)
  valid = y >= 0
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(y, 0)[:, None], axis=1)[:, 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(valid.sum(), 1).astype(jnp.float32)


def test_uresnet_trains_in_float32_and_bfloat16():
  x, y = _lartpc_batch()
  y = jnp.asarray(y)
  for dtype in (jnp.float32, jnp.bfloat16):
    model = _small_uresnet(dtype=dtype)
    xd = x.replace(feats=x.feats.astype(dtype))
    losses, _ = _train_steps(model, _voxel_loss, xd, y, steps=4)
    assert losses[-1] < losses[0], (dtype, losses)


def test_count_macs_counts_real_pairs():
  x, _ = _lartpc_batch()
  conv = js.nn.SparseConv3d(1, 8, 3, rngs=nnx.Rngs(0))
  kmap, _ = js.ops.kernel_map(x, 3)
  assert js.nn.count_macs(conv, x)["total"] == int(kmap.num_pairs) * 8
  model = _small_uresnet()
  model.eval()
  macs = js.nn.count_macs(model, x)
  assert macs["by_kind"]["sparse_conv"] > 0 and macs["by_kind"]["linear"] > 0
  # Doubling the data (the same events twice) doubles the MACs: they follow real pairs, not capacity.
  x2, _ = data.collate([data.synthetic_lartpc_event(s, size=64) for s in (0, 1, 0, 1)])
  assert js.nn.count_macs(model, x2)["total"] == 2 * macs["total"]


def test_count_macs_of_a_transposed_conv_are_the_pairs_it_transposes():
  x, _ = _lartpc_batch()
  down = js.nn.SparseConv3d(1, 4, 2, stride=2, rngs=nnx.Rngs(0))
  up = js.nn.SparseConvTranspose3d(4, 3, 2, stride=2, rngs=nnx.Rngs(1))
  y = down(x)
  pairs = int(js.ops.kernel_map(x, 2, stride=2)[0].num_pairs)
  assert js.nn.count_macs(down, x)["total"] == pairs * 1 * 4
  assert js.nn.count_macs(up, y)["total"] == pairs * 4 * 3
  assert js.nn.count_macs(up, y, x)["total"] == pairs * 4 * 3  # with an explicit target


def test_count_macs_of_dense_layers_follow_their_shapes():
  rngs = nnx.Rngs(0)
  grid = jnp.ones((2, 6, 5, 4, 3))
  same = nnx.Conv(3, 7, (3, 3, 3), padding="SAME", use_bias=False, rngs=rngs)
  macs = 2 * 6 * 5 * 4 * 27 * 3 * 7  # every tap of every output, the zero padding included
  assert js.nn.count_macs(same, grid) == {"total": macs, "by_kind": {"dense_conv": macs}}
  # A transposed conv counts the taps on its real inputs: brute force over the dilated input.
  up = nnx.ConvTranspose(3, 2, (3, 3, 3), strides=(2, 2, 2), padding="SAME", use_bias=False, rngs=rngs)
  out = up(grid)
  taps = 0
  for pos in np.ndindex(*grid.shape[1:4]):  # each input voxel feeds the outputs its 27 taps reach
    for t in np.ndindex(3, 3, 3):
      o = [2 * p + k - 1 for p, k in zip(pos, t)]  # SAME pads the 2x-dilated input by 1 in front
      taps += all(0 <= v < n for v, n in zip(o, out.shape[1:4]))
  assert js.nn.count_macs(up, grid)["total"] == 2 * taps * 3 * 2
  linear = nnx.Linear(3, 5, rngs=rngs)
  assert js.nn.count_macs(linear, jnp.ones((4, 9, 3)))["by_kind"] == {"linear": 4 * 9 * 3 * 5}
  masked = js.nn.Linear(3, 5, rngs=rngs)  # rows on a mask count the real rows only
  assert js.nn.count_macs(masked, jnp.ones((9, 3)), mask=jnp.arange(9) < 4)["total"] == 4 * 3 * 5


def test_count_macs_refuses_what_it_cannot_count():
  x, _ = _lartpc_batch()
  conv = js.nn.SparseConv3d(1, 8, 3, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="call it eagerly"):
    jax.jit(lambda x: js.nn.count_macs(conv, x))(x)
  linear = nnx.Linear(3, 5, rngs=nnx.Rngs(0))
  branchy = lambda v: jax.lax.cond(v.sum() > 0, linear, lambda v: jnp.zeros((4, 5)), v)
  with pytest.raises(ValueError, match="inside lax.cond"):
    js.nn.count_macs(branchy, jnp.ones((4, 3)))


def _lidar_points(rng, p=600, pad=40):
  xyz = np.concatenate([rng.uniform(0, 40, (p, 2)), rng.uniform(0, 6, (p, 1))], axis=1).astype(np.float32)
  feats = np.concatenate([xyz / 40, rng.uniform(0, 1, (p, 1))], axis=1).astype(np.float32)
  labels = (xyz[:, 2] > 3).astype(np.int32) + 2 * (xyz[:, 0] > 20)
  batch = np.zeros(p, np.int32)
  pad_xyz = np.zeros((pad, 3), np.float32)
  return (jnp.asarray(np.r_[xyz, pad_xyz]), jnp.asarray(np.r_[batch, -np.ones(pad, np.int32)]),
          jnp.asarray(np.r_[feats, np.zeros((pad, 4), np.float32)]), jnp.asarray(np.r_[labels, -np.ones(pad, int)]))


@pytest.mark.parametrize("dims", [3, 2])
def test_the_uresnet_twins_agree_on_a_fully_occupied_grid(dims, rng):
  """Where every voxel is active a submanifold conv is a 'SAME' dense conv and masked batch norm is batch norm, so
  the sparse U-ResNet must give the dense one's logits: the twins start from the same weights."""
  kw = dict(filters=4, depth=3, reps=1, spatial_dims=dims)
  sparse, dense = models.UResNet(**kw, rngs=nnx.Rngs(3)), models.DenseUResNet(**kw, rngs=nnx.Rngs(3))
  for a, b in zip(jax.tree.leaves(nnx.state(sparse, nnx.Param)), jax.tree.leaves(nnx.state(dense, nnx.Param)),
                  strict=True):
    np.testing.assert_array_equal(np.ravel(a), np.ravel(b))
  side = 8 if dims == 3 else 16
  shape = (side,) * 3 if dims == 3 else (side, side, 1)
  grid = rng.standard_normal((2, *shape, 1)).astype(np.float32)
  coords = np.argwhere(np.ones(grid.shape[:4], bool))
  x = js.SparseTensor.from_coords(jnp.asarray(coords), jnp.asarray(grid[tuple(coords.T)]))
  got = np.asarray(nnx.jit(lambda m, x: m(x).feats)(sparse, x))
  want = np.asarray(nnx.jit(lambda m, g: m(g))(dense, jnp.asarray(grid if dims == 3 else grid[..., 0, :])))
  rows = np.asarray(x.coords)[:len(coords)]
  want = want[tuple(rows.T)] if dims == 3 else want[tuple(rows[:, :3].T)]
  np.testing.assert_allclose(got[:len(coords)], want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
    models.UResNet(spatial_dims=1, rngs=nnx.Rngs(0))


@pytest.mark.slow  # minutes on 2 cores; run with -m slow
def test_minkunet_and_spvcnn_run_train_and_ignore_padding(rng):
  xyz, batch, feats, labels = _lidar_points(rng)
  x, row = js.ops.voxelize(xyz, batch, feats)
  vox_labels = jnp.full((x.capacity,), -1, jnp.int32).at[jnp.where(row >= 0, row, x.capacity)].set(
      labels, mode="drop")
  mink = models.MinkUNet(num_classes=4, cr=0.25, rngs=nnx.Rngs(0))
  out = nnx.jit(lambda m, x: m(x).feats)(mink, x)
  assert out.shape == (x.capacity, 4)
  losses, _ = _train_steps(mink, _voxel_loss, x, vox_labels, steps=3)
  assert losses[-1] < losses[0], losses

  spv = models.SPVCNN(num_classes=4, cr=0.25, rngs=nnx.Rngs(1))
  spv.eval()  # deterministic (dropout off) for the padding check
  fwd = nnx.jit(lambda m, *a: m(*a))
  logits = fwd(spv, xyz, batch, feats)
  assert logits.shape == (len(xyz), 4) and not np.asarray(logits)[batch < 0].any()
  garbage = jnp.where((batch >= 0)[:, None], feats, 7.0)
  np.testing.assert_array_equal(np.asarray(fwd(spv, xyz, batch, garbage))[batch >= 0],
                                np.asarray(logits)[batch >= 0])
  spv.train()

  def point_loss(model, xyz, batch, feats, labels):
    logits = model(xyz, batch, feats)
    valid = labels >= 0
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(labels, 0)[:, None], axis=1)[:, 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / valid.sum().astype(jnp.float32)

  losses, _ = _train_steps(spv, point_loss, xyz, batch, feats, labels, steps=3)
  assert losses[-1] < losses[0], losses


@pytest.mark.slow  # 20 s on 2 cores; the U-ResNet's translation test stays in the default suite
def test_minkunet_translation_equivariance(rng):
  xyz, batch, feats, _ = _lidar_points(rng, p=400, pad=0)
  x, _ = js.ops.voxelize(xyz, batch, feats)
  mink = models.MinkUNet(num_classes=3, cr=0.25, rngs=nnx.Rngs(0))
  mink.eval()
  fwd = nnx.jit(lambda m, x: m(x).feats)
  shift = np.array([0, 16 * 3, -16 * 5, 16 * 2])  # deepest stride 16
  n = int(x.num_valid)
  moved = js.SparseTensor.from_coords(np.asarray(x.coords)[:n] + shift, np.asarray(x.feats)[:n], capacity=x.capacity)
  a, b = np.asarray(fwd(mink, x))[:n], np.asarray(fwd(mink, moved))[:n]
  order_a = np.lexsort(np.asarray(x.coords)[:n].T[::-1])
  np.testing.assert_allclose(b, a[order_a], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # minutes on 2 cores; run with -m slow
def test_pvcnn_and_dense_uresnet_run_and_train(rng):
  pts = jnp.asarray(rng.uniform(-1, 1, (2, 64, 6)).astype(np.float32))
  labels = jnp.asarray((np.asarray(pts)[..., 0] > 0).astype(np.int32))
  one_hot = jax.nn.one_hot(jnp.array([3, 5]), 16)
  model = models.PVCNN("shapenet_part", width=0.125, num_classes=2, rngs=nnx.Rngs(0))
  out = nnx.jit(lambda m, p, o: m(p, o))(model, pts, one_hot)
  assert out.shape == (2, 64, 2)

  def loss(m, p, o, y):
    return optax.softmax_cross_entropy_with_integer_labels(m(p, o), y).mean()

  losses, _ = _train_steps(model, loss, pts, one_hot, labels, steps=4)
  assert losses[-1] < losses[0], losses
  s3dis = models.PVCNN("s3dis", width=0.125, rngs=nnx.Rngs(0))
  assert nnx.jit(lambda m, p: m(p))(s3dis, jnp.asarray(rng.uniform(-1, 1, (2, 32, 9)).astype(np.float32))).shape == (
      2, 32, 13)

  x, y = _lartpc_batch(seeds=(0,), size=32)
  grid = js.ops.to_dense(x, spatial_shape=(32, 32, 32), batch_size=1)
  dense_labels = js.ops.to_dense(x.replace(feats=jnp.asarray(y, jnp.float32)[:, None] + 1.0),
                                 spatial_shape=(32, 32, 32), batch_size=1)[..., 0].astype(jnp.int32) - 1
  net = models.DenseUResNet(filters=4, depth=3, reps=1, rngs=nnx.Rngs(0))

  def dense_loss(m, g, lab):
    mask = models.nonempty_mask(g)
    nll = optax.softmax_cross_entropy_with_integer_labels(m(g), jnp.maximum(lab, 0))
    return jnp.sum(jnp.where(mask, nll, 0.0)) / mask.sum().astype(jnp.float32)

  losses, _ = _train_steps(net, dense_loss, grid, dense_labels, steps=3)
  assert losses[-1] < losses[0], losses
  with pytest.raises(ValueError, match="divisible"):
    net(jnp.zeros((1, 30, 32, 32, 1)))


@pytest.mark.parametrize("task", ["calo", pytest.param("shapenet_part", marks=pytest.mark.slow)])
def test_pvcnn_ignores_masked_points(task, rng):
  # Two sets of 48 points, then the same sets padded to 80 with junk: the real points' logits and the gradients
  # must not change (batch statistics, voxel averages, pooled features and the centring all skip the padding).
  channels = 5 if task == "calo" else 6
  real = rng.uniform(-1, 1, (2, 48, channels)).astype(np.float32)
  padded = np.concatenate([real, rng.uniform(-3, 3, (2, 32, channels)).astype(np.float32)], axis=1)
  mask = np.arange(80)[None].repeat(2, 0) < 48
  one_hot = jax.nn.one_hot(jnp.array([3, 5]), 16) if task == "shapenet_part" else None
  model = models.PVCNN(task, width=0.125, num_classes=3, rngs=nnx.Rngs(0))

  def loss(m, pts, msk):
    logits = m(pts, one_hot, point_mask=msk)[:, :48]
    return jnp.mean(logits ** 2), logits

  # Training mode (batch statistics over the real points only); dropout's masks depend on the padded shape: off.
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.Dropout):
      module.deterministic = True
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda st, p, k: nnx.value_and_grad(loss, has_aux=True)(nnx.merge(graphdef, st), p, k))
  (_, want), grads_want = run(state, jnp.asarray(real), jnp.ones((2, 48), bool))
  (_, got), grads_got = run(state, jnp.asarray(padded), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_got), jax.tree.leaves(grads_want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)
  with pytest.raises(ValueError, match="point_mask must be bool"):
    model(jnp.asarray(real), one_hot, point_mask=jnp.ones((2, 40), bool))


def test_pointnet_is_a_function_of_the_point_set_and_its_alignments_start_as_the_identity(rng):
  pts = jnp.asarray(rng.uniform(-1, 1, (2, 48, 3)).astype(np.float32))
  one_hot = jax.nn.one_hot(jnp.array([2, 7]), 16)
  model = models.PointNet(num_classes=4, width=0.125, rngs=nnx.Rngs(0))
  model.eval()
  run = nnx.jit(lambda m, p: m(p, one_hot))  # one compiled program, not one per eager op
  out = run(model, pts)
  assert out.shape == (2, 48, 4)
  perm = rng.permutation(48)
  np.testing.assert_allclose(np.asarray(run(model, pts[:, perm])), np.asarray(out)[:, perm], atol=1e-5)
  # The T-Nets' last layer starts at zero: the input alignment is the identity, to the last bit.
  align = model.blocks[0][0]
  apply = nnx.jit(lambda a, p: a(p))
  assert isinstance(align, nnx.Module) and np.array_equal(np.asarray(apply(align, pts)), np.asarray(pts))
  # Once trained away from zero, an alignment is a per-cloud linear map of the points: x -> x A_b^T.
  align.matrix.bias[...] = jnp.asarray(rng.standard_normal(9).astype(np.float32))
  aligned = np.asarray(apply(align, pts))
  for b in range(2):
    a, *_ = np.linalg.lstsq(np.asarray(pts[b]), aligned[b], rcond=None)
    np.testing.assert_allclose(np.asarray(pts[b]) @ a, aligned[b], atol=1e-4)
  with pytest.raises(ValueError, match=r"part segmentation needs shape_one_hot \[B, 16\].*got None"):
    model(pts, None)
  with pytest.raises(ValueError, match=r"got \(2, 15\)"):
    model(pts, one_hot[:, :15])
  assert models.PointNet(transforms=False, width=0.125, rngs=nnx.Rngs(0)).blocks[0][0] is None


def _standard_promotion(fn):
  def wrapped(*args):
    with jax.numpy_dtype_promotion("standard"):
      return fn(*args)
  return wrapped


@pytest.mark.slow  # minutes on 2 cores; run with -m slow
def test_every_model_runs_forward_and_backward_in_bfloat16(rng):
  bf16 = dict(dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  xyz, batch, feats, _ = _lidar_points(rng, p=300, pad=10)
  x, _ = js.ops.voxelize(xyz, batch, feats.astype(jnp.bfloat16))
  pts = jnp.asarray(rng.uniform(-1, 1, (1, 32, 9)).astype(np.float32)).astype(jnp.bfloat16)
  grid = jnp.zeros((1, 8, 8, 8, 1), jnp.bfloat16).at[0, 2:5, 3, 4, 0].set(1.0)
  cases = [
      (models.MinkUNet(num_classes=3, cr=0.25, **bf16), lambda m: m(x).feats),
      (models.SPVCNN(num_classes=3, cr=0.25, **bf16), lambda m: m(xyz, batch, feats.astype(jnp.bfloat16))),
      (models.PVCNN("s3dis", width=0.125, **bf16), lambda m: m(pts)),
      (models.DenseUResNet(filters=4, depth=2, reps=1, **bf16), lambda m: m(grid)),
  ]
  for model, call in cases:
    if isinstance(model, (models.PVCNN, models.DenseUResNet)):  # they use flax's BatchNorm directly, which
      call = _standard_promotion(call)                            # mixes bfloat16 and float32 implicitly
    out = nnx.jit(call)(model)
    assert out.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out, np.float32)).all(), type(model).__name__
    grads = nnx.jit(nnx.grad(lambda m, call=call: jnp.sum(call(m).astype(jnp.float32) ** 2)))(model)
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in leaves), type(model).__name__
