"""The calorimeter generators against their stated parameterisations, and calorimeter hit tables on disk."""

import math

import h5py
import numpy as np
import pytest

from jsparse3d import data
from jsparse3d.data import _calo


def _visible_gev(ev):
  """A noiseless event's deposited energy, from MIPs back to GeV with each layer's MIP loss."""
  return ev["points"][:, 3] * _calo.LAYER_MIP_GEV[ev["coords"][:, 2]]


def test_hgcal_events_hold_every_class_with_its_signature():
  events = [data.synthetic_hgcal_event(seed) for seed in range(40)]
  labels = np.concatenate([ev["labels"] for ev in events])
  points = np.concatenate([ev["points"] for ev in events])
  instances = np.concatenate([ev["instances"] for ev in events])
  assert points.shape[1] == 5 and points.dtype == np.float32 and labels.dtype == np.int32
  assert set(np.unique(labels)) == {0, 1, 2, 3}
  np.testing.assert_array_equal(instances == -1, labels == _calo.NOISE)
  # Noise hits: the Gaussian tail's rate over the cells without a deposit (80 x 80 x 50 cells, a few thousand
  # hit); the binomial's spread over 40 events is about 3.6 hits on the mean.
  expected = _calo.noise_probability(0.17, 0.5) * 80 * 80 * _calo.NUM_LAYERS
  noise_per_event = np.mean([(ev["labels"] == _calo.NOISE).sum() for ev in events])
  assert abs(noise_per_event - expected) < 0.03 * expected
  noise, em, mip = labels == _calo.NOISE, labels == _calo.EM, labels == _calo.MIP
  assert points[noise, 3].min() >= 0.5 and np.median(points[noise, 3]) < 0.6  # just above the threshold
  assert points[noise, 4].std() > 5 * points[em, 4].std()  # uniform over the bunch crossing
  assert np.median(points[noise, 3]) < np.median(points[mip, 3]) < np.median(points[em, 3])
  for ev in events[:5]:  # one hit per cell, positions at the cells' centres
    c = ev["coords"].astype(np.int64)
    assert len(np.unique((c[:, 2] * 100 + c[:, 0]) * 100 + c[:, 1])) == len(c)
    np.testing.assert_allclose(ev["points"][:, 2], _calo.LAYER_Z[c[:, 2]], rtol=1e-6)
    np.testing.assert_allclose(ev["points"][:, 0], c[:, 0] + 0.5 - 40.0, atol=1e-5)


def test_em_showers_follow_the_gamma_profile_and_contain_their_energy():
  depth = {}
  for kind in ("electron", "photon"):
    means = []
    for seed in range(30):
      ev = data.synthetic_hgcal_event(seed, particles=[(kind, 50.0)], noise=False)
      layer, e = ev["coords"][:, 2], _visible_gev(ev)
      centre = (_calo.X0_EDGES[layer] + _calo.X0_EDGES[layer + 1]) / 2
      means.append(np.sum(centre * e) / e.sum())
      if kind == "electron":  # 25 X0 hold all but ~1% (leakage) and the cells under threshold
        assert 0.95 * 50 < e.sum() < 50.5
    depth[kind] = np.mean(means)
  # The Gamma profile's mean a / b; photons start 9/7 X0 later on average and peak 1 X0 deeper (C = +0.5).
  assert abs(depth["electron"] - _calo.em_profile_shape(50.0, photon=False) / _calo.EM_B) < 0.3
  assert abs(depth["photon"] - depth["electron"] - (1.0 + 9 / 7)) < 0.4


def test_the_lateral_profile_holds_90_percent_within_the_moliere_radius():
  rng = np.random.default_rng(0)
  r = _calo._radii(rng, 200_000, _calo.EM_CORE, _calo.EM_CORE_WEIGHT, _calo.EM_TAIL)  # in Moliere radii
  within = lambda radius: 1.0 / (1.0 + radius ** 2)  # g's share outside R_M = 1 is R^2 / (1 + R^2)
  expected = _calo.EM_CORE_WEIGHT * within(_calo.EM_CORE) + (1 - _calo.EM_CORE_WEIGHT) * within(_calo.EM_TAIL)
  assert abs(expected - 0.90) < 0.005 and abs(np.mean(r < 1.0) - expected) < 0.004
  assert abs(np.mean(r < 0.5) - (_calo.EM_CORE_WEIGHT * 0.25 / (0.25 + _calo.EM_CORE ** 2)
                                  + (1 - _calo.EM_CORE_WEIGHT) * 0.25 / (0.25 + _calo.EM_TAIL ** 2))) < 0.004
  # In the detector: the energy within R_M (2.5 cm) of the axis, at 1 cm cell centres, of electrons at 50 GeV.
  shares = []
  for seed in range(10):
    ev = data.synthetic_hgcal_event(seed, particles=[("electron", 50.0)], noise=False)
    p, e = ev["points"], _visible_gev(ev)
    em = ev["coords"][:, 2] < _calo.EM_LAYERS
    w, z = e[em], p[em, 2:3]
    slope = np.sum(w[:, None] * p[em, :2] * z, axis=0) / np.sum(w[:, None] * z ** 2)  # the axis, through the IP
    dist = np.linalg.norm(p[em, :2] - slope * z, axis=1)
    shares.append(e[em][dist < 2.5].sum() / e[em].sum())
  assert 0.82 < np.mean(shares) < 0.95


def test_hadrons_interact_on_the_interaction_length_scale():
  # A pion reaches layer 26's silicon without interacting with probability exp(-lambda at that depth).
  reach = []
  for seed in range(200):
    ev = data.synthetic_hgcal_event(seed, particles=[("pion", 50.0)], noise=False)
    reach.append(np.any((ev["labels"] == _calo.MIP) & (ev["coords"][:, 2] == 26)))
  expected = math.exp(-_calo.LAMBDA_EDGES[27])
  assert abs(np.mean(reach) - expected) < 0.08
  ev = data.synthetic_hgcal_event(7, particles=[("pion", 100.0)], noise=False)
  assert set(np.unique(ev["instances"])) == {0} and _calo.HADRONIC in ev["labels"]


def test_muons_leave_one_mip_per_layer():
  energies, cosines = [], []
  for seed in range(20):
    ev = data.synthetic_hgcal_event(seed, particles=[("muon", 0.0)], noise=False)
    assert np.all(ev["labels"] == _calo.MIP) and len(ev["labels"]) == _calo.NUM_LAYERS
    p = ev["points"]
    cosines.append(p[0, 2] / np.linalg.norm(p[0, :3]))
    energies.append(p[:, 3])
  # Moyal: the median of -ln(Z^2) is -ln(0.4549); the path length scales it by 1 / cos(theta).
  expected = (1.0 + 0.12 * -math.log(0.45494)) / np.mean(cosines)
  assert abs(np.median(np.concatenate(energies)) - expected) < 0.03


def test_pileup_adds_particles_with_their_own_instances():
  a = data.synthetic_hgcal_event(5, particles=[("electron", 20.0)])
  b = data.synthetic_hgcal_event(5, particles=[("electron", 20.0)], pileup=20.0)
  assert len(b["particles"]["kind"]) > 10 and len(np.unique(b["instances"])) > len(np.unique(a["instances"]))


def test_calorimeter_events_are_seeded_and_options_are_checked():
  a, b = data.synthetic_hgcal_event(3), data.synthetic_hgcal_event(3)
  for key in ("points", "labels", "instances", "coords"):
    np.testing.assert_array_equal(a[key], b[key])
  np.testing.assert_array_equal(data.synthetic_hcal_event(3)["points"], data.synthetic_hcal_event(3)["points"])
  with pytest.raises(ValueError, match="particle kind 'kaon'"):
    data.synthetic_hgcal_event(0, particles=[("kaon", 5.0)])
  with pytest.raises(ValueError, match="positive energy"):
    data.synthetic_hgcal_event(0, particles=[("pion", 0.0)])
  with pytest.raises(ValueError, match="threshold"):
    data.SyntheticHGCAL(4, threshold=0.0)
  ds = data.SyntheticHCAL(3, seed=1)
  np.testing.assert_array_equal(ds[2]["points"], data.synthetic_hcal_event((1, 2))["points"])
  with pytest.raises(IndexError):
    ds[3]


def test_hcal_events_hold_noise_and_clusters():
  events = [data.synthetic_hcal_event(seed) for seed in range(100)]
  labels = np.concatenate([ev["labels"] for ev in events])
  points = np.concatenate([ev["points"] for ev in events])
  instances = np.concatenate([ev["instances"] for ev in events])
  np.testing.assert_array_equal(instances == -1, labels == 0)
  # 30 noise towers per event on average, less the few that fall on a signal cell.
  assert 27 < (labels == 0).sum() / len(events) < 31
  r = np.linalg.norm(points[:, :2], axis=1)
  assert np.all(np.min(np.abs(r[:, None] - _calo.HCAL_RADII[None]), axis=1) < 1e-3)  # on the depth layers
  assert points[:, 3].min() >= 0.1
  late = points[:, 4] - np.linalg.norm(points[:, :3], axis=1) / _calo.C_CM_PER_NS
  assert abs(late[labels == 1].std() - 1.0) < 0.05  # the 1 ns resolution on the time of flight
  assert abs(points[labels == 0, 4].std() - 25 / math.sqrt(12)) < 0.3  # uniform over the bunch crossing


@pytest.mark.parametrize("layout", ["calo.h5", "events"])
def test_calorimeter_tables_round_trip(tmp_path, layout):
  events = [data.synthetic_hgcal_event(s) for s in range(3)] + [data.synthetic_hcal_event(0)]
  path = data.write_calo_events(tmp_path / layout, events)
  ds = data.CaloEvents(path)
  assert len(ds) == 4 and ds.has_instances
  for ev, got in zip(events, (ds[i] for i in range(4))):
    np.testing.assert_array_equal(got["points"], ev["points"])
    np.testing.assert_array_equal(got["labels"], ev["labels"])
    np.testing.assert_array_equal(got["instances"], ev["instances"])
  with pytest.raises(IndexError):
    ds[4]


def test_bad_calorimeter_files_say_what_is_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.CaloEvents(tmp_path / "nothing.h5")
  (tmp_path / "pickles").mkdir()
  (tmp_path / "pickles" / "00000.pkl").write_bytes(b"not read")
  with pytest.raises(ValueError, match="never read here; convert them"):
    data.CaloEvents(tmp_path / "pickles")
  path = data.write_calo_events(tmp_path / "a.h5", [data.synthetic_hcal_event(s) for s in range(2)])
  with h5py.File(path, "a") as f:
    offsets = f["event_offsets"][:]
    del f["event_offsets"]
    f["event_offsets"] = offsets + np.array([0, 0, 5])
  with pytest.raises(ValueError, match="truncated"):
    data.CaloEvents(path)
  with h5py.File(path, "a") as f:
    del f["time"]
  with pytest.raises(ValueError, match=r"lacks the datasets \['time'\]"):
    data.CaloEvents(path)
  folder = tmp_path / "npz"
  folder.mkdir()
  np.savez(folder / "e.npz", x=np.zeros(3), y=np.zeros(3), z=np.zeros(3), time=np.zeros(3), energy=np.zeros(3))
  with pytest.raises(ValueError, match=r"lacks the columns \['semantic'\]"):
    data.CaloEvents(folder)[0]
  np.savez(folder / "e.npz", x=np.zeros(3), y=np.zeros(3), z=np.array([0, np.nan, 0]), time=np.zeros(3),
           energy=np.zeros(3), semantic=np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="NaN or infinite"):
    data.CaloEvents(folder)[0]
  np.savez(folder / "e.npz", x=np.zeros(3), y=np.zeros(3), z=np.zeros(2), time=np.zeros(3), energy=np.zeros(3),
           semantic=np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="one row per hit"):
    data.CaloEvents(folder)[0]


def test_point_sets_are_padded_to_a_bucket_with_a_mask_and_keep_every_point():
  events = [data.calo_features(data.synthetic_hcal_event(s), centre=(0, 0, 0, 12.5), scale=(265, 265, 500, 12.5))
            for s in range(2)]
  sizes = [len(ev["labels"]) for ev in events]
  (points, mask), y = data.collate_point_sets(events, features=("feats",), buckets=(64, 128, 256),
                                              instances="instances")
  cap = min(b for b in (64, 128, 256) if b >= max(sizes))
  assert points.shape == (2, cap, 5) and mask.sum(axis=1).tolist() == sizes
  for b, ev in enumerate(events):
    np.testing.assert_array_equal(points[b, :sizes[b]], ev["feats"])
    np.testing.assert_array_equal(y["labels"][b, :sizes[b]], ev["labels"])
    np.testing.assert_array_equal(y["instances"][b, :sizes[b]], ev["instances"])
    assert np.all(y["labels"][b, sizes[b]:] == -1) and np.all(points[b, sizes[b]:] == 0)
  with pytest.raises(ValueError, match="no point is ever dropped"):
    data.collate_point_sets(events, features=("feats",), capacity=max(sizes) - 1)
  (xyz, batch, feats), y = data.collate_points(events, voxel_size=10.0, features=("feats",), instances="instances")
  np.testing.assert_array_equal(y["instances"][:sum(sizes)], np.concatenate([ev["instances"] for ev in events]))
  assert np.all(y["instances"][sum(sizes):] == -1) and np.all(y["labels"][sum(sizes):] == -1)


def test_calorimeter_features_are_the_documented_normalisation():
  ev = data.synthetic_hgcal_event(1)
  out = data.calo_features(ev, centre=(0, 0, 400, 12.5), scale=(40, 40, 80, 12.5), energy_unit=2.0)
  p = ev["points"].astype(np.float64)
  want = np.stack([p[:, 0] / 40, p[:, 1] / 40, (p[:, 2] - 400) / 80, np.log(p[:, 3] / 2.0), (p[:, 4] - 12.5) / 12.5],
                  axis=1)
  np.testing.assert_allclose(out["feats"], want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="4 numbers"):
    data.calo_features(ev, centre=(0, 0, 0), scale=(1, 1, 1, 1))
