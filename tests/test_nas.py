"""3D-NAS: masked subnets against plain models built at their widths, exports, MACs against count_macs,
recalibration against batch statistics, deterministic searches, clear errors, and the CLI end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import state_leaves
from flax import nnx

import jsparse3d as js
from jsparse3d import data
from jsparse3d import nas
from jsparse3d.nas import Subnet


def _lartpc_batches(count, size=48, per_batch=2):
  ds = data.SyntheticLArTPC(count * per_batch, seed=3, size=size, scheme="uresnet5")
  return [data.collate([ds[per_batch * i + j] for j in range(per_batch)], features=("energy",), level_strides=(2, 4))
          for i in range(count)]


def _points():
  ds = data.SyntheticLidar(2, seed=0, beams=16, azimuths=96)
  (x, y) = data.collate_points([ds[0], ds[1]], voxel_size=0.05)
  return x, y


def _uresnet(**kw):
  return nas.ElasticUResNet(filters=kw.pop("filters", 6), depth=3, reps=2, rngs=nnx.Rngs(1), **kw)


def _max_abs(a, b):
  return float(jnp.max(jnp.abs(a - b)))


def _leading_slice(big: np.ndarray, shape, path) -> np.ndarray:
  """The oracle of weight sharing, written apart from the library: each axis keeps its leading entries, except
  the channels a decoder's first block takes (the skip's and the upsampled halves, each the leading part of its
  half)."""
  concat_axes = set()
  if path[0] == "decoder" and path[2] == 0:
    name = path[3]
    if name == "bn1":
      concat_axes = {0}
    elif name == "conv1" or name == "shortcut":
      concat_axes = {big.ndim - 2}
  out = big
  for axis, n in enumerate(shape):
    if out.shape[axis] == n:
      continue
    if axis in concat_axes:
      half = out.shape[axis] // 2
      idx = np.r_[np.arange(n // 2), half + np.arange(n // 2)]
    else:
      idx = np.arange(n)
    out = np.take(out, idx, axis=axis)
  return out


def test_largest_subnet_is_the_plain_model():
  x, _ = _lartpc_batches(1)[0]
  sup = _uresnet()
  plain = js.models.UResNet(filters=6, depth=3, reps=2, rngs=nnx.Rngs(1))
  sup.eval()
  plain.eval()
  assert _max_abs(sup(x, subnet=sup.space.largest()).feats, plain(x).feats) == 0
  assert _max_abs(sup(x).feats, plain(x).feats) == 0  # eval mode without a subnet: the largest
  # SPVCNN: the supernet builds the plain model's layers (its largest subnet's outputs: the export test below)
  shapes = lambda m: jax.tree.map(np.shape, nnx.to_pure_dict(nnx.state(m, nnx.Param)))
  sup = nnx.eval_shape(lambda: nas.ElasticSPVCNN(cr=0.25, rngs=nnx.Rngs(2)))
  assert shapes(sup.net) == shapes(nnx.eval_shape(lambda: js.models.SPVCNN(cr=0.25, rngs=nnx.Rngs(2))))


def test_subnet_equals_a_plain_uresnet_of_its_widths_holding_the_leading_weights():
  x, _ = _lartpc_batches(1)[0]
  sup = _uresnet()
  sup.eval()
  sub = Subnet((3, 8, 12), (1, 2, 1))
  plain = js.models.UResNet(filters=[3, 8, 12], depth=3, reps=[1, 2, 1], rngs=nnx.Rngs(9))
  plain.eval()
  big = {tuple(getattr(k, "key", k) for k in p): np.asarray(v)
         for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(sup.net)))[0]}
  state = nnx.state(plain)
  pure = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.asarray(_leading_slice(big[tuple(getattr(k, "key", k) for k in p)], v.shape,
                                              tuple(getattr(k, "key", k) for k in p))), nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(plain, state)
  want = plain(x).feats
  got = sup(x, subnet=sub).feats
  assert _max_abs(got, want) <= 1e-5 * float(jnp.max(jnp.abs(want)))
  assert _max_abs(sup.export(sub)(x).feats, got) <= 1e-5 * float(jnp.max(jnp.abs(want)))


@pytest.mark.parametrize("arch", ["uresnet", pytest.param("spvcnn", marks=pytest.mark.slow)])
def test_export_equals_supernet_and_macs_equal_count_macs(arch, tmp_path):
  rng = np.random.default_rng(0)
  if arch == "uresnet":
    x, _ = _lartpc_batches(1)[0]
    sup, inputs = _uresnet(), (x,)
    logits = lambda out: out.feats
  else:
    points, _ = _points()
    sup, inputs = nas.ElasticSPVCNN(cr=0.25, rngs=nnx.Rngs(2)), points
    logits = lambda out: out
  sup.eval()
  geometry = sup.geometry(*inputs)
  for sub in [sup.space.smallest(), sup.space.largest()] + [sup.space.sample(rng) for _ in range(2)]:
    model = sup.export(sub)
    want = logits(sup(*inputs, subnet=sub))
    assert _max_abs(logits(model(*inputs)), want) <= 1e-5 * float(jnp.max(jnp.abs(want)))
    assert sup.macs(sub, geometry) == js.nn.count_macs(model, *inputs)["total"]
  # an export is a plain model: saved and loaded like any
  path = js.nn.save_weights(model, tmp_path / "w")
  cls = type(model)
  fresh = cls(**sup.plain_config(sub), rngs=nnx.Rngs(5))
  fresh.eval()
  js.nn.load_weights(fresh, path)
  assert _max_abs(logits(fresh(*inputs)), logits(model(*inputs))) == 0


def test_a_dropped_block_returns_its_input():
  """Dropping level 2's second block: the plain model with that block's residual branch zeroed by hand, and the
  export (which leaves the block out) both equal the supernet."""
  x, _ = _lartpc_batches(1)[0]
  sup = _uresnet()
  sup.eval()
  sub = Subnet(sup.space.max_widths, (2, 2, 1))
  plain = nnx.clone(sup.net)
  block = plain.encoder[2][1]
  block.conv2.kernel.set_value(jnp.zeros_like(block.conv2.kernel[...]))
  want = plain(x).feats
  assert _max_abs(sup(x, subnet=sub).feats, want) == 0
  export = sup.export(sub)
  assert len(export.encoder[2]) == 1
  assert _max_abs(export(x).feats, want) <= 1e-5 * float(jnp.max(jnp.abs(want)))


def test_training_draws_subnets_from_the_seed_and_the_count():
  x, _ = _lartpc_batches(1)[0]

  def draws(seed, n):
    sup = _uresnet(seed=seed)
    graph, state = nnx.split(sup)
    step = jax.jit(lambda s: (lambda m: (m._draw(), nnx.state(m)))(nnx.merge(graph, s)))
    out = []
    for _ in range(n):
      (w, d), state = step(state)
      out.append((tuple(np.asarray(w)), tuple(np.asarray(d))))
    return out

  a, b, c = draws(0, 12), draws(0, 12), draws(1, 12)
  assert a == b and a != c
  assert len(set(a)) > 6  # not stuck
  space = _uresnet().space
  for w, d in a:
    space.check(Subnet(w, d))
    assert all(wi in choices for wi, choices in zip(w, space.width_choices))

  sandwich = _uresnet(sampling="sandwich")
  graph, state = nnx.split(sandwich)
  step = jax.jit(lambda s: (lambda m: (m._draw(), nnx.state(m)))(nnx.merge(graph, s)))
  seen = []
  for _ in range(4):
    (w, d), state = step(state)
    seen.append(Subnet(tuple(np.asarray(w)), tuple(np.asarray(d))))
  assert seen[0] == space.largest() and seen[1] == space.smallest()


def test_recalibrated_statistics_are_the_calibration_batch_statistics():
  """With one calibration batch, the recalibrated subnet in eval mode normalises that batch exactly as the
  training-mode forward (batch statistics) does."""
  (x, y), = _lartpc_batches(1)
  sup = _uresnet()
  sub = Subnet((3, 8, 9), (2, 1, 2))
  evaluator = nas.SubnetEvaluator(sup, calibration=[x], validation=[(x, y)], num_classes=5)
  recal = evaluator.recalibrated(sub)
  want_model = sup.export(sub)
  want_model.train()
  want = want_model(x).feats
  got = recal.export(sub)(x).feats
  assert _max_abs(got, want) <= 2e-4 * float(jnp.max(jnp.abs(want)))
  score = evaluator(sub)
  assert 0 <= score <= 1 and evaluator.cache[sub]["nonzero_accuracy"] == score
  cm = js.training.ConfusionMatrix(5).add(js.training.confusion_matrix(got, y, 5))
  assert score == pytest.approx(cm.nonzero_accuracy(), abs=1e-12)


def test_training_moves_the_running_averages_of_the_subnet_only():
  x, _ = _lartpc_batches(1)[0]
  sup = _uresnet()
  sub = Subnet((3, 12, 9), (2, 1, 2))
  stats = lambda m: {k: np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(
      nnx.to_pure_dict(nnx.state(m.net, nnx.BatchStat)))[0]}
  before = stats(sup)
  sup(x, subnet=sub)
  after = stats(sup)
  moved = lambda path_text: [k for k in after if path_text in jax.tree_util.keystr(k)]
  mean0 = moved("'head_bn']['norm']['mean']")[0]
  assert not np.array_equal(after[mean0][:3], before[mean0][:3])  # level 0's active channels moved
  assert np.array_equal(after[mean0][3:], before[mean0][3:])      # its inactive ones did not
  dropped = moved("['encoder'][1][1]['bn1']['norm']['var']")[0]   # level 1 keeps one block: block 1 is dropped
  assert np.array_equal(after[dropped], before[dropped])
  kept = moved("['encoder'][1][0]['bn1']['norm']['var']")[0]
  assert not np.array_equal(after[kept], before[kept])


def _toy_space():
  return nas.SearchSpace(((2, 4, 6, 8),) * 4, ((1, 2, 3),) * 3, tuple(f"g{i}" for i in range(4)),
                         tuple(f"s{i}" for i in range(3)))


def _toy_score(sub):  # a known optimum, to see the search work
  return -sum(abs(w - t) for w, t in zip(sub.widths, (6, 2, 8, 4))) - sum(abs(d - 2) for d in sub.depths)


def _toy_cost(sub):
  return sum(sub.widths) * sum(sub.depths)


def test_searches_are_deterministic_distinct_and_within_budget():
  space = _toy_space()
  budget = 0.5 * _toy_cost(space.largest())
  for search in (nas.evolutionary_search, nas.random_search):
    kw = dict(population=6, parents=3) if search is nas.evolutionary_search else {}
    a = search(space, _toy_score, _toy_cost, budget, evaluations=30, seed=4, **kw)
    b = search(space, _toy_score, _toy_cost, budget, evaluations=30, seed=4, **kw)
    c = search(space, _toy_score, _toy_cost, budget, evaluations=30, seed=5, **kw)
    assert a == b and a != c
    assert len(a) == 30 and len({e.subnet for e in a}) == 30
    assert all(e.cost <= budget and e.score == _toy_score(e.subnet) for e in a)
    longer = search(space, _toy_score, _toy_cost, budget, evaluations=50, seed=4, **kw)
    assert longer[:30] == a and len({e.subnet for e in longer}) == 50  # 30 is 5 whole generations of 6
  evo = np.mean([nas.best(nas.evolutionary_search(space, _toy_score, _toy_cost, budget, evaluations=40,
                                                  population=8, parents=3, seed=s)).score for s in range(6)])
  rnd = np.mean([nas.best(nas.random_search(space, _toy_score, _toy_cost, budget, evaluations=40, seed=s)).score
                 for s in range(6)])
  assert evo > rnd


def test_pareto_front():
  points = [(1, 0.5), (2, 0.4), (2, 0.7), (3, 0.7), (4, 0.9), (0.5, 0.1)]
  assert nas.pareto_front(points) == [5, 0, 2, 4]


@pytest.mark.parametrize("lo,hi,expect", [(62, 132, [70, 80, 90, 100, 120]), (0.45, 3.2, [0.5, 0.7, 1, 2, 3]),
                                           (1.8, 13, [2, 3, 5, 7, 10])])
def test_pareto_plot_labels_a_short_log_axis_with_round_ticks(lo, hi, expect):
  from train import nas as nas_cli
  assert nas_cli._log_ticks(lo, hi) == expect


def test_bad_subnets_and_settings_get_clear_errors():
  sup = _uresnet()
  space = sup.space
  with pytest.raises(ValueError, match="width 13 of level 1 is outside 1..12"):
    space.check(Subnet((6, 13, 18), (1, 1, 1)))
  with pytest.raises(ValueError, match="level 2 has depth 0: every stage keeps at least its first block"):
    space.check(Subnet((6, 12, 18), (1, 1, 0)))
  with pytest.raises(ValueError, match="has 2 blocks there"):
    space.check(Subnet((6, 12, 18), (1, 3, 1)))
  with pytest.raises(ValueError, match="3 widths .* and 3 depths"):
    space.check(Subnet((6, 12), (1, 1, 1)))
  with pytest.raises(TypeError, match="Subnet"):
    space.check({"widths": [6, 12, 18]})
  x, _ = _lartpc_batches(1)[0]
  with pytest.raises(ValueError, match="outside"):
    sup(x, subnet=Subnet((7, 12, 18), (1, 1, 1)))
  with pytest.raises(ValueError, match="below the smallest subnet's cost"):
    nas.random_search(_toy_space(), _toy_score, _toy_cost, 1.0, evaluations=3)
  with pytest.raises(ValueError, match="no new subnet within the budget"):
    nas.random_search(_toy_space(), _toy_score, _toy_cost, _toy_cost(_toy_space().smallest()), evaluations=3)
  with pytest.raises(ValueError, match="sampling must be one of"):
    _uresnet(sampling="greedy")
  with pytest.raises(ValueError, match=r"width fractions must lie in \(0, 1\]"):
    _uresnet(width_fractions=(0.5, 1.5))
  with pytest.raises(ValueError, match="parents must be in 1..population"):
    nas.evolutionary_search(_toy_space(), _toy_score, _toy_cost, 100, evaluations=4, population=2, parents=3)
  assert Subnet.from_dict(json.loads(json.dumps(Subnet((1, 2), (3,)).to_dict()))) == Subnet((1, 2), (3,))
  with pytest.raises(ValueError, match="'depths'"):
    Subnet.from_dict({"widths": [1]})


def _float_size(tree) -> int:
  return sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(v.dtype, jnp.floating))


def test_latency_table_keys_every_layer_at_its_widths(monkeypatch):
  """With a "timer" that returns the size of the timed layer's weights and statistics, a subnet's layer sum must be
  its export's size: every kept layer is looked up once, at the channels the subnet gives it. (Real timings of a
  network this small are too close to each other to order under load.)"""
  x, _ = _lartpc_batches(1)[0]
  sup = _uresnet()
  monkeypatch.setattr("jsparse3d.nas._latency.timed", lambda fn, state, *args, repeats: float(_float_size(
      nnx.to_pure_dict(state))))
  table = nas.LatencyTable(sup, (x,), repeats=1)
  rng = np.random.default_rng(1)
  for subnet in [sup.space.largest(), sup.space.smallest()] + [sup.space.sample(rng) for _ in range(6)]:
    assert table.layer_sum(subnet) == _float_size(nnx.to_pure_dict(nnx.state(sup.export(subnet))))


def test_latency_table_times_layers_and_fits_two_measurements():
  x, _ = _lartpc_batches(1)[0]
  sup = _uresnet()
  table = nas.LatencyTable(sup, (x,), repeats=1)
  assert min(table.entries.values()) > 0
  big, small = sup.space.largest(), sup.space.smallest()
  scale, overhead = table.calibrate({big: 0.010, small: 0.004})
  assert table.predict(big) == pytest.approx(0.010) and table.predict(small) == pytest.approx(0.004)
  assert scale == pytest.approx(0.006 / (table.layer_sum(big) - table.layer_sum(small)))
  assert nas.measure_latency(sup.export(small), (x,), repeats=2) > 0


def test_plain_models_take_per_level_and_per_stage_shapes():
  m = js.models.UResNet(filters=[4, 6, 10], depth=3, reps=[1, 2, 1], rngs=nnx.Rngs(0))
  assert [len(level) for level in m.encoder] == [1, 2, 1] and m.encoder[2][0].conv1.kernel.shape[-1] == 10
  with pytest.raises(ValueError, match="filters lists 2 levels but depth is 3"):
    js.models.UResNet(filters=[4, 6], depth=3, rngs=nnx.Rngs(0))
  s = js.models.SPVCNN(channels=[8, 8, 12, 16, 20, 20, 16, 12, 12], blocks=[1, 2, 1, 1, 1, 1, 2, 1],
                       projections=[True] + [False] * 7, rngs=nnx.Rngs(0))
  assert len(s.backbone.stages[1]) == 3 and s.backbone.stages[0][1].proj is not None  # projected at equal widths
  with pytest.raises(ValueError, match="9 positive widths"):
    js.models.MinkUNet(channels=[8, 8], rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="8 positive counts"):
    js.models.MinkUNet(blocks=[1, 2], rngs=nnx.Rngs(0))


@pytest.mark.slow  # three short trainings, each compiling the supernet's step: about 2 minutes
def test_supernet_training_resumes_exactly_and_pmap_matches_one_device(tmp_path):
  """The draws continue after a resume (same subnets, so the same weights as an uninterrupted run), and two
  devices draw the same subnet as one device does."""
  from train import configs
  from train import train_lib
  # No warm-up: every step moves each weight it reaches by about the learning rate (Adam), so a subnet drawn
  # differently on one side would show as differences of 4e-3, far above float rounding.
  cfg = configs.get_config("uresnet_nas_lartpc_smoke", ["steps=4", "checkpoint_every=2", "eval_every=4",
                                                        "optimizer.warmup_steps=0"])
  straight = train_lib.train(cfg, tmp_path / "straight", progress=False)
  train_lib.train(cfg, tmp_path / "resumed", progress=False, stop_after=2)
  resumed = train_lib.train(cfg, tmp_path / "resumed", progress=False)
  a, b = state_leaves(straight["state"]), state_leaves(resumed["state"])
  draws = next(k for k in a if "draws" in k)
  assert int(a[draws]) == int(b[draws]) == 4
  assert all(np.array_equal(a[k], b[k]) for k in a)
  two = train_lib.train(cfg, tmp_path / "two", progress=False, devices=2)
  c = state_leaves(two["state"])
  assert int(c[draws]) == 4
  params = [k for k in a if "opt_state" not in k and a[k].dtype.kind == "f"]
  assert max(float(np.max(np.abs(a[k].astype(np.float64) - c[k]))) for k in params) < 4e-4


class _CountingEvaluator:
  """The evaluator's interface (``cache``, ``scores``, ``__call__``), counting the subnets it really scores."""

  def __init__(self):
    self.cache, self.scored = {}, 0

  def scores(self, subnet):
    if subnet not in self.cache:
      self.scored += 1
      self.cache[subnet] = {"miou": _toy_score(subnet) / 7.0, "nonzero_accuracy": 1 / 3}  # not round in decimal
    return self.cache[subnet]

  def __call__(self, subnet):
    return self.scores(subnet)["miou"]


def test_score_log_reads_back_scores_of_the_same_digest_only(tmp_path):
  from train import nas as nas_cli
  space, path = _toy_space(), tmp_path / "scores.jsonl"
  subnets = [space.sample(np.random.default_rng(k)) for k in range(6)]
  first = nas_cli.ScoreLog(path, "abc", _CountingEvaluator(), say=lambda _: None)
  values = [first(s) for s in subnets[:4] + subnets[:2]]
  assert first.evaluator.scored == len(first.fresh) == 4 and not first.reused
  assert len(path.read_text().splitlines()) == 1 + 4
  again = nas_cli.ScoreLog(path, "abc", _CountingEvaluator(), say=lambda _: None)
  assert [again(s) for s in subnets[:4] + subnets[:2]] == values  # bit for bit through JSON
  assert again.evaluator.scored == 0 and len(again.reused) == 4
  assert again(subnets[5]) == _toy_score(subnets[5]) / 7.0 and again.evaluator.scored == 1
  assert len(path.read_text().splitlines()) == 1 + 5
  other = nas_cli.ScoreLog(path, "xyz", _CountingEvaluator(), say=lambda _: None)
  other(subnets[0])
  assert other.evaluator.scored == 1 and len(path.read_text().splitlines()) == 1 + 1


@pytest.mark.parametrize("name", ["uresnet_nas_lartpc_smoke", pytest.param("spvnas_lidar_smoke",
                                                                          marks=pytest.mark.slow)])
def test_nas_cli_trains_searches_exports_and_finetunes(name, tmp_path):
  from train import nas as nas_cli
  workdir = tmp_path / "run"
  assert nas_cli.main(["--config", name, "--workdir", str(workdir), "--no-progress", "--compile-cache", "off"]) == 0
  summary = json.loads((workdir / "search" / "summary.json").read_text())
  assert summary["export_max_abs_error"] <= 1e-5 * max(1.0, summary["export_max_abs_logit"])  # float32 rounding
  assert {r["method"] for r in summary["runs"]} == {"evolution", "random"}
  records = [json.loads(line) for line in (workdir / "search" / "evaluations.jsonl").read_text().splitlines()]
  assert len(records) == len(summary["runs"]) * summary["evaluations_per_search"]
  assert all(r[summary["budget"]] <= summary["budget_value"] * (1 + 1e-9) for r in records)
  assert (workdir / "search" / "pareto.png").stat().st_size > 10_000
  spec = json.loads((workdir / "subnet" / "subnet.json").read_text())
  assert Subnet.from_dict(spec["subnet"]) == Subnet.from_dict(summary["chosen"]["subnet"])
  largest = json.loads((workdir / "largest" / "subnet.json").read_text())
  assert Subnet.from_dict(largest["subnet"]) == Subnet.from_dict(summary["largest"]["subnet"])
  assert summary["test"]["events"] == (4 if name.startswith("uresnet") else 2)
  if name.startswith("uresnet"):  # the chosen subnet and the largest, fine-tuned alike
    assert {k: v["test"]["step"] for k, v in summary["finetuned"].items()} == {"chosen": 2, "largest": 2}
    assert all((workdir / d / "metrics.jsonl").exists() for d in ("finetune", "finetune_largest"))
    # A rerun finds the finished search and the finished fine-tuning: it repeats neither.
    before = (workdir / "search" / "evaluations.jsonl").stat().st_mtime_ns
    assert nas_cli.main(["--config", name, "--workdir", str(workdir), "--no-progress", "--compile-cache", "off"]) == 0
    assert (workdir / "search" / "evaluations.jsonl").stat().st_mtime_ns == before
    assert json.loads((workdir / "search" / "summary.json").read_text())["finetuned"] == summary["finetuned"]
    # A longer search reads back the scores it has and begins as the shorter one did (4: two generations of 2).
    assert nas_cli.main(["--config", name, "--workdir", str(workdir), "--no-progress", "--compile-cache", "off",
                         "--set", "nas.evaluations=6"]) == 0
    longer = json.loads((workdir / "search" / "summary.json").read_text())
    again = [json.loads(line) for line in (workdir / "search" / "evaluations.jsonl").read_text().splitlines()]
    timeless = lambda rs: [{k: v for k, v in r.items() if k != "latency"} for r in rs]  # the table is timed anew
    assert timeless(r for r in again if r["index"] < 4) == timeless(records)
    assert longer["subnets_read_back"] == len({json.dumps(r["subnet"]) for r in records} | {"largest"})
    assert (workdir / "search" / "progress.png").stat().st_size > 10_000
  with pytest.raises(SystemExit):
    nas_cli.main(["--config", name, "--set", "nas.budget=flops"])
