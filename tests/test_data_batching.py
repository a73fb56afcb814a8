"""Collation into bucketed SparseTensors, and the loader's order: deterministic, resumable, sharded, prefetched."""

import logging

import jax
import numpy as np
import pytest

from jsparse3d import data


class _Toy:
  """Events of 1..40 voxels with recognisable contents: energy = event index, labels = voxel number % 5."""

  def __init__(self, n=23):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    rng = np.random.default_rng(i)
    m = 1 + i % 40
    coords = rng.permutation(np.unique(rng.integers(0, 50, (m, 3)), axis=0))
    return {"coords": coords, "energy": np.full(len(coords), float(i), np.float32),
            "labels": np.arange(len(coords), dtype=np.int32) % 5, "index": i}


def test_bucket_capacity_is_the_smallest_that_holds_the_batch(caplog):
  buckets = (1024, 2048, 4096)
  assert data.bucket_capacity(1, buckets) == 1024
  assert data.bucket_capacity(1024, buckets) == 1024
  assert data.bucket_capacity(1025, buckets) == 2048
  with caplog.at_level(logging.WARNING, logger="jsparse3d.data"):
    assert data.bucket_capacity(5000, buckets) == 8192  # never truncated: the next power of two
  assert "exceeds the largest bucket" in caplog.text
  assert all(b2 > b1 for b1, b2 in zip(data.DEFAULT_BUCKETS, data.DEFAULT_BUCKETS[1:]))
  with pytest.raises(ValueError, match="positive"):
    data.bucket_capacity(3, (0, 8))


def test_collate_keeps_every_voxel_and_aligns_labels(caplog):
  events = [data.synthetic_lartpc_event(seed) for seed in range(3)]
  with caplog.at_level(logging.DEBUG, logger="jsparse3d.data"):
    x, y = data.collate(events)
  assert "bucket" in caplog.text  # the bucket choice is logged
  total = sum(len(ev["labels"]) for ev in events)
  assert int(x.num_valid) == total and x.capacity == data.bucket_capacity(total)
  coords, feats = np.asarray(x.coords), np.asarray(x.feats)
  for b, ev in enumerate(events):
    rows = coords[:, 0] == b
    order = np.lexsort(ev["coords"].T[::-1])
    np.testing.assert_array_equal(coords[rows, 1:], ev["coords"][order])
    np.testing.assert_array_equal(feats[rows, 0], ev["energy"][order])
    np.testing.assert_array_equal(y[rows], ev["labels"][order])
  assert (y[total:] == -1).all() and (coords[total:, 0] == -1).all() and not feats[total:].any()
  # Features from several keys, a fixed capacity, and the errors.
  x2, _ = data.collate(events, features=("energy", "energy"), capacity=total + 5)
  assert x2.feats.shape == (total + 5, 2)
  with pytest.raises(ValueError, match="no voxel is ever dropped"):
    data.collate(events, capacity=total - 1)
  with pytest.raises(KeyError, match="charge"):
    data.collate(events, features=("charge",))


def test_loader_order_is_deterministic_and_covers_each_epoch_once():
  ds = _Toy(23)
  loader = data.Loader(ds, 4, seed=3, num_steps=10, prefetch=0, features=("energy",))
  assert loader.steps_per_epoch == 5  # 23 // 4; the incomplete batch is dropped
  epoch0 = np.concatenate([loader.indices(s) for s in range(5)])
  assert len(set(epoch0.tolist())) == 20
  epoch1 = np.concatenate([loader.indices(s) for s in range(5, 10)])
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(epoch0, np.concatenate([data.Loader(ds, 4, seed=3).indices(s) for s in range(5)]))
  assert not np.array_equal(epoch0, np.concatenate([data.Loader(ds, 4, seed=4).indices(s) for s in range(5)]))
  unshuffled = data.Loader(ds, 4, shuffle=False)
  np.testing.assert_array_equal(unshuffled.indices(1), [4, 5, 6, 7])


def test_a_kept_remainder_covers_every_event_and_a_dropped_one_is_logged(caplog):
  ds = _Toy(23)
  with caplog.at_level("INFO", logger="jsparse3d.data"):
    data.Loader(ds, 4)
  assert "drops its last 3 of 23 events" in caplog.text
  kept = data.Loader(ds, 4, shuffle=False, drop_remainder=False, prefetch=0, features=("energy",))
  assert kept.steps_per_epoch == 6
  np.testing.assert_array_equal(np.concatenate([kept.indices(s) for s in range(6)]), np.arange(23))
  last = kept.batch(5)[0]
  assert int(last.num_valid) == sum(len(ds[i]["coords"]) for i in (20, 21, 22))
  # two processes: the second gets nothing from the last global batch of 3, and its batch is empty, not an error
  shares = [data.Loader(ds, 2, process_index=p, process_count=2, drop_remainder=False, shuffle=False)
            for p in range(2)]
  assert [len(s.indices(5)) for s in shares] == [2, 1]


def _energies(batch):
  x, _ = batch
  feats, coords = np.asarray(x.feats), np.asarray(x.coords)
  return [float(feats[coords[:, 0] == b, 0][0]) for b in range(coords[:, 0].max() + 1)]


def test_restarting_from_a_step_continues_exactly():
  ds = _Toy(23)
  full = [_energies(b) for b in data.Loader(ds, 4, seed=1, num_steps=9, prefetch=0)]
  resumed = [_energies(b) for b in data.Loader(ds, 4, seed=1, start_step=6, num_steps=3, prefetch=0)]
  assert resumed == full[6:]
  prefetched = [_energies(b) for b in data.Loader(ds, 4, seed=1, num_steps=9, prefetch=3)]
  assert prefetched == full


def test_processes_share_each_global_batch_without_overlap():
  ds = _Toy(40)
  shards = [data.Loader(ds, 3, seed=2, process_index=p, process_count=3) for p in range(3)]
  assert shards[0].steps_per_epoch == 4
  for step in range(8):
    parts = [set(s.indices(step).tolist()) for s in shards]
    assert all(len(p) == 3 for p in parts)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
  seen = set()
  for step in range(4):
    for s in shards:
      seen |= set(s.indices(step).tolist())
  assert len(seen) == 36
  with pytest.raises(ValueError, match="process_index"):
    data.Loader(ds, 3, process_index=3, process_count=3)


def test_device_split_stacks_equal_capacity_shares():
  ds = _Toy(16)
  loader = data.Loader(ds, 4, devices=2, prefetch=0, num_steps=1)
  x, y = next(iter(loader))
  assert x.coords.shape[0] == 2 and x.feats.shape[:2] == x.coords.shape[:2] and y.shape == x.coords.shape[:2]
  idx = loader.indices(0)
  for d in range(2):
    share = [ds[int(i)] for i in idx[2 * d:2 * d + 2]]
    assert int(x.num_valid[d]) == sum(len(ev["coords"]) for ev in share)
  out = jax.pmap(lambda t: t.feats.sum())(x)
  assert out.shape == (2,)
  with pytest.raises(ValueError, match="multiple of devices"):
    data.Loader(ds, 3, devices=2)


def test_transform_gets_a_reproducible_rng():
  def jitter(ev, rng):
    return ev | {"energy": ev["energy"] + rng.normal(size=len(ev["energy"])).astype(np.float32)}

  a = next(iter(data.Loader(_Toy(8), 2, seed=5, transform=jitter, prefetch=0)))
  b = next(iter(data.Loader(_Toy(8), 2, seed=5, transform=jitter, prefetch=0)))
  np.testing.assert_array_equal(a[0].feats, b[0].feats)


def test_errors_in_the_background_thread_reach_the_consumer():
  class Broken(_Toy):
    def __getitem__(self, i):
      raise RuntimeError("disk on fire")

  with pytest.raises(RuntimeError, match="disk on fire"):
    next(iter(data.Loader(Broken(8), 2, prefetch=2)))


def test_collate_plans_level_capacities_and_device_shares_share_one_plan():
  events = [data.synthetic_lartpc_event(s, size=64) for s in range(4)]
  x, _ = data.collate(events, level_strides=(2, 4))
  assert [s for s, _ in x.capacities] == [(2, 2, 2), (4, 4, 4)]
  assert all(cap <= x.capacity for _, cap in x.capacities)
  loader = data.Loader(events, 4, devices=2, collate_fn=data.collate, level_strides=(2, 4), prefetch=0,
                       num_steps=1, shuffle=False)
  xs, _ = next(iter(loader))  # stacking the two shares needs one static plan
  shares = [data.collate(events[:2], level_strides=(2, 4))[0], data.collate(events[2:], level_strides=(2, 4))[0]]
  for (_, cap), *per_share in zip(xs.capacities, *[s.capacities for s in shares]):
    assert cap == max(c for _, c in per_share)
