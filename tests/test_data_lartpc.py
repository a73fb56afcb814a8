"""The synthetic LArTPC generator against the targets of the data issue and the physics of DOMAIN.md."""

import time

import numpy as np
import pytest

from jsparse3d import data
from jsparse3d.data import _lartpc
from jsparse3d.data._schemes import HIP
from jsparse3d.data._schemes import MIP

URESNET = dict(HIP=0, MIP=1, shower=2, delta=3, michel=4)


@pytest.fixture(scope="module")
def events192():
  return [data.synthetic_lartpc_event(seed) for seed in range(200)]


def test_occupancy_and_class_mix_over_200_events(events192):
  n = np.array([len(ev["labels"]) for ev in events192])
  occupancy = n.mean() / 192 ** 3
  assert 0.0005 / 2 <= occupancy <= 0.0005 * 2, occupancy
  labels = np.concatenate([ev["labels"] for ev in events192])
  fractions = np.bincount(labels, minlength=5) / len(labels)
  assert fractions[URESNET["michel"]] < 0.02, fractions
  assert fractions[URESNET["delta"]] < 0.05, fractions
  present = np.mean([[np.any(ev["labels"] == c) for c in range(5)] for ev in events192], axis=0)
  assert (present >= 0.2).all(), present


def test_occupancy_at_512_over_200_events():
  n = np.array([len(data.synthetic_lartpc_event(seed, size=512)["labels"]) for seed in range(200)])
  occupancy = n.mean() / 512 ** 3
  assert 0.0001 / 2 <= occupancy <= 0.0001 * 2, occupancy


def test_events_are_well_formed_and_seeded(events192):
  for ev in events192[:20]:
    c = ev["coords"]
    assert c.dtype == np.int32 and ev["energy"].dtype == np.float32 and ev["labels"].dtype == np.int32
    assert c.min() >= 0 and c.max() < 192
    keys = (c[:, 0].astype(np.int64) * 192 + c[:, 1]) * 192 + c[:, 2]
    assert (np.diff(keys) > 0).all()  # unique and C-ordered
    assert (ev["energy"] > 0).all() and ev["labels"].min() >= 0 and ev["labels"].max() <= 4
  again = data.synthetic_lartpc_event(7)
  for key in ("coords", "energy", "labels"):
    np.testing.assert_array_equal(again[key], events192[7][key])
  assert len(data.synthetic_lartpc_event(8)["labels"]) != len(again["labels"]) or not np.array_equal(
      data.synthetic_lartpc_event(8)["coords"], again["coords"])


def test_larcv5_scheme_relabels_the_same_event():
  seen_scatter = False
  for seed in range(10):
    u = data.synthetic_lartpc_event(seed, scheme="uresnet5")
    v = data.synthetic_lartpc_event(seed, scheme="larcv5")
    np.testing.assert_array_equal(u["coords"], v["coords"])
    # uresnet5 -> larcv5 agrees wherever larcv5 is not low-energy scatter (which uresnet5 calls shower).
    converted = data.uresnet5_to_larcv5(u["labels"])
    les = v["labels"] == 4
    np.testing.assert_array_equal(converted[~les], v["labels"][~les])
    assert (u["labels"][les] == 2).all()
    seen_scatter |= bool(les.any())
  assert seen_scatter
  with pytest.raises(ValueError, match="scheme"):
    data.synthetic_lartpc_event(0, scheme="pilarnet")


def _single_track(kinetic, mass, kind, start, direction, seed=0):
  ev = _lartpc._Event(np.random.default_rng(seed), 192)
  direction = np.asarray(direction, float) / np.linalg.norm(direction)
  ev.tracks(np.asarray(start, float)[None], direction[None], np.array([kinetic]), np.array([mass]), np.array([kind]),
            deltas=False)
  return ev.voxels()


def _is_26_connected_chain(coords):
  """Every voxel has a 26-neighbour in the set, and the set is one connected component."""
  keys = {tuple(c) for c in coords.tolist()}
  seen, stack = set(), [next(iter(keys))]
  while stack:
    c = stack.pop()
    if c in seen:
      continue
    seen.add(c)
    for d in np.ndindex(3, 3, 3):
      n = (c[0] + d[0] - 1, c[1] + d[1] - 1, c[2] + d[2] - 1)
      if n in keys and n not in seen:
        stack.append(n)
  return len(seen) == len(keys)


def test_mip_tracks_are_thin_26_connected_lines_with_the_right_energy():
  coords, energy, _ = _single_track(5000.0, _lartpc.M_MU, MIP, (0.0, 96.5, 96.5), (1.0, 0.0, 0.0))
  assert len(coords) == 192 and _is_26_connected_chain(coords)
  assert abs(np.median(energy) - 0.63) < 0.01  # 2.1 MeV/cm over 3 mm
  coords, energy, _ = _single_track(5000.0, _lartpc.M_MU, MIP, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
  assert _is_26_connected_chain(coords)
  assert abs(np.median(energy) - 0.63 * np.sqrt(3)) < 0.02  # diagonal: 1.09 MeV
  coords, energy, _ = _single_track(3000.0, _lartpc.M_MU, MIP, (10.0, 50.0, 100.0), (1.0, 0.4, -0.2), seed=3)
  assert _is_26_connected_chain(coords)
  assert 0.6 <= np.median(energy) <= 1.1


def test_protons_rise_to_a_bragg_peak_5_to_10_times_a_mip_voxel():
  peaks, means = [], []
  for seed in range(8):
    rng = np.random.default_rng(seed)
    _, energy, kinds = _single_track(rng.uniform(60, 200), _lartpc.M_P, HIP, (96.0, 96.0, 96.0),
                                     rng.normal(size=3), seed=seed)
    assert (kinds == HIP).all()
    peaks.append(energy.max() / 0.63)
    means.append(np.median(energy) / 0.63)
  assert 5 <= np.median(peaks) <= 10, peaks
  assert 2 <= np.median(means) <= 6, means  # 3-6x MIP in dE/dx at 50-100 MeV, per voxel with angle


def test_proton_range_follows_its_kinetic_energy():
  # 100 MeV: ~7.7 cm, i.e. ~26 voxels along an axis.
  coords, _, _ = _single_track(100.0, _lartpc.M_P, HIP, (20.5, 96.5, 96.5), (1.0, 0.0, 0.0))
  assert 22 <= len(coords) <= 30, len(coords)


def test_michel_spectrum_has_the_expected_mean_and_endpoint():
  ev = _lartpc._Event(np.random.default_rng(0), 192)
  energies = []
  for _ in range(4000):
    ev.michel(np.zeros(3))
    energies.append(ev.electrons.pop()[2])
  energies = np.array(energies)
  assert energies.max() <= 52.8
  # x^2 (3 - 2x) on [0, 1] has mean 0.7: 36.96 MeV.
  assert abs(energies.mean() - 0.7 * 52.8) < 0.6, energies.mean()


def test_showers_branch_into_many_blobs():
  ev = _lartpc._Event(np.random.default_rng(1), 192)
  ev.photons.append((np.array([96.0, 96.0, 20.0]), np.array([0.0, 0.0, 1.0]), 400.0, _lartpc.LESCATTER))
  ev.run_cascades()
  coords, energy, kinds = ev.voxels()
  assert len(coords) > 150
  # Several disconnected fragments: a branching cascade with isolated Compton blobs, not one track.
  keys = {tuple(c) for c in coords.tolist()}
  components, seen = 0, set()
  for start in keys:
    if start in seen:
      continue
    components += 1
    stack = [start]
    while stack:
      c = stack.pop()
      if c in seen:
        continue
      seen.add(c)
      stack += [n for d in np.ndindex(3, 3, 3)
                if (n := (c[0] + d[0] - 1, c[1] + d[1] - 1, c[2] + d[2] - 1)) in keys and n not in seen]
  assert components >= 5, components


def test_noise_voxels_and_bad_arguments():
  base = data.synthetic_lartpc_event(5)
  noisy = data.synthetic_lartpc_event(5, noise_voxels=50)
  assert len(base["labels"]) < len(noisy["labels"]) <= len(base["labels"]) + 50
  with pytest.raises(ValueError, match="size"):
    data.synthetic_lartpc_event(0, size=8)
  with pytest.raises(ValueError, match="noise_voxels"):
    data.synthetic_lartpc_event(0, noise_voxels=-1)


def test_dataset_wraps_the_generator():
  ds = data.SyntheticLArTPC(5, seed=4)
  assert len(ds) == 5
  np.testing.assert_array_equal(ds[2]["coords"], data.synthetic_lartpc_event((4, 2))["coords"])
  with pytest.raises(IndexError):
    ds[5]


@pytest.mark.slow
def test_generates_at_least_50_events_per_second_on_one_core():
  best = 0.0
  for attempt in range(3):
    t0 = time.perf_counter()
    for seed in range(40):
      data.synthetic_lartpc_event((attempt, seed))
    best = max(best, 40 / (time.perf_counter() - t0))
  assert best >= 50, f"{best:.1f} events/s"


def test_michel_ionisation_is_michel_and_its_photons_are_shower():
  from jsparse3d.data._schemes import LESCATTER
  from jsparse3d.data._schemes import MICHEL
  from jsparse3d.data._schemes import SHOWER
  kinds = set()
  for seed in range(6):
    ev = _lartpc._Event(np.random.default_rng(seed), 192)
    ev.electrons.append((np.array([96.0, 96.0, 96.0]), _lartpc._isotropic(ev.rng), 50.0, MICHEL, SHOWER))
    ev.run_cascades()
    kinds |= set(ev.voxels()[2].tolist())
  assert MICHEL in kinds and SHOWER in kinds and LESCATTER not in kinds, kinds
