"""A seeded generator of high-granularity calorimeter events: hits (x, y, z, E, t) labelled noise / hadronic / EM /
MIP, for the 5-feature input path of the HGCAL-style noise-filtering study.

Geometry: ``num_layers`` silicon layers, 1 cm apart in z from z = 0, with square 1 cm cells over [-half_width,
half_width)^2 in x and y. Particles come from the interaction point 320 cm upstream, so they reach the front face
almost along z and at t ~ 10.7 ns.
- EM showers (electrons, photons, 5-100 GeV): a gamma-function longitudinal profile peaking a few layers in
  (X0 = 1 layer), a narrow core plus a halo (Moliere radius ~2.5 cm), fine-grained energy sharing.
- Hadronic showers (charged pions, 10-200 GeV): start after an exponential depth (lambda_int = 10 layers), are
  wider and longer, and fragment into an EM-like core plus a few displaced sub-clusters, with late hits.
- MIPs (muons): one cell per layer along a straight line, Landau-like energies around 1 MIP.
- Noise: electronic noise in random cells of every layer, with energies of a Gaussian tail just above the
  threshold and times uniform over the 25 ns readout window.
Energies are in MIP units (about 85 keV in 300 um silicon), times in ns, positions in cm. A cell hit by several
particles keeps the summed energy, the earliest time and the label of the largest contributor.
"""

from __future__ import annotations

import numpy as np

from jsparse3d.data._deposits import merge_deposits

NOISE, HADRONIC, EM, MIP = range(4)
CLASS_NAMES = ("noise", "hadronic", "EM", "MIP")
_C_CM_PER_NS = 29.98
_IP_DISTANCE = 320.0


def _front_direction(rng, half_width):
  """A direction from the interaction point to a random point of the inner front face."""
  target = np.array([*rng.uniform(-0.6 * half_width, 0.6 * half_width, 2), _IP_DISTANCE])
  return target / np.linalg.norm(target)


def _shower(rng, axis, energy_mip, *, start_layer, shape, scale, core_cm, halo_cm, halo_frac, num_layers,
            num_blobs):
  """Energy blobs of a shower: a gamma-profile along ``axis`` and a core+halo transverse spread."""
  depth = start_layer + rng.gamma(shape, scale, num_blobs)
  keep = depth < num_layers
  depth = depth[keep]
  halo = rng.random(len(depth)) < halo_frac
  radius = np.where(halo, halo_cm, core_cm)
  offset = rng.normal(size=(len(depth), 2)) * radius[:, None]
  x = axis[0] / axis[2] * (_IP_DISTANCE + depth) + offset[:, 0]
  y = axis[1] / axis[2] * (_IP_DISTANCE + depth) + offset[:, 1]
  e = rng.exponential(1.0, len(depth))
  e *= energy_mip * keep.mean() / max(e.sum(), 1e-9)
  return x, y, depth, e


def synthetic_calo_event(seed, *, num_layers: int = 50, half_width: float = 40.0, noise_fraction: float = 0.3) -> dict:
  """One calorimeter event.

  Args:
    seed: int or sequence of ints; the same seed gives the same event.
    num_layers: layers (1 cm apart). half_width: half the transverse size in cm.
    noise_fraction: expected noise hits as a fraction of all hits.
  Returns:
    dict with ``points`` float32[N, 5] (x, y, z in cm at cell centres, E in MIP units, t in ns), ``labels``
    int32[N] (0 noise, 1 hadronic, 2 EM, 3 MIP) and ``coords`` int32[N, 3] (cell indices x, y, layer).
  """
  if not 0 <= noise_fraction < 1:
    raise ValueError(f"noise_fraction must be in [0, 1), got {noise_fraction}.")
  rng = np.random.default_rng(seed)
  xs, ys, zs, es, ts, labels = [], [], [], [], [], []

  def add(x, y, z, e, t, label):
    xs.append(x), ys.append(y), zs.append(z), es.append(e), ts.append(t), labels.append(np.full(len(x), label))

  def arrival(axis, depth):
    return (_IP_DISTANCE + depth) / axis[2] / _C_CM_PER_NS

  for _ in range(rng.integers(1, 4)):  # EM showers
    axis = _front_direction(rng, half_width)
    e_gev = rng.uniform(5, 100)
    x, y, z, e = _shower(rng, axis, 70 * e_gev, start_layer=rng.exponential(1.3), shape=2.0 + 0.5 * np.log(e_gev),
                         scale=1.0, core_cm=0.8, halo_cm=2.5, halo_frac=0.2, num_layers=num_layers,
                         num_blobs=int(40 * e_gev ** 0.7))
    add(x, y, z, e, arrival(axis, z) + rng.normal(0, 0.05, len(z)), EM)
  for _ in range(rng.integers(0, 3)):  # hadronic showers
    axis = _front_direction(rng, half_width)
    e_gev = rng.uniform(10, 200)
    start = rng.exponential(10.0)
    for part, frac in enumerate(rng.dirichlet(np.ones(4) * 1.5)):
      sub_axis = axis if part == 0 else _front_direction(rng, half_width) * 0.02 + axis
      sub_axis = sub_axis / np.linalg.norm(sub_axis)
      x, y, z, e = _shower(rng, sub_axis, 40 * e_gev * frac, start_layer=start + 3 * part, shape=2.5, scale=4.0,
                           core_cm=2.0, halo_cm=6.0, halo_frac=0.35, num_layers=num_layers,
                           num_blobs=max(4, int(25 * (e_gev * frac) ** 0.7)))
      late = rng.exponential(1.5, len(z)) * (rng.random(len(z)) < 0.2)  # slow neutrons
      add(x, y, z, e, arrival(sub_axis, z) + late + rng.normal(0, 0.05, len(z)), HADRONIC)
  for _ in range(rng.integers(0, 3)):  # muons
    axis = _front_direction(rng, half_width)
    z = np.arange(num_layers, dtype=float) + 0.5
    x = axis[0] / axis[2] * (_IP_DISTANCE + z)
    y = axis[1] / axis[2] * (_IP_DISTANCE + z)
    e = 1.0 + rng.gumbel(0.0, 0.15, num_layers).clip(-0.5, 5)  # Landau-like around 1 MIP
    add(x, y, z, e, arrival(axis, z) + rng.normal(0, 0.05, num_layers), MIP)

  x, y, z = np.concatenate(xs), np.concatenate(ys), np.concatenate(zs)
  e, t, lab = np.concatenate(es), np.concatenate(ts), np.concatenate(labels)
  cells = np.stack([np.floor(x + half_width), np.floor(y + half_width), np.floor(z)], axis=1).astype(np.int64)
  width = int(2 * half_width)
  inside = np.all((cells >= 0) & (cells < [width, width, num_layers]), axis=1)
  cells, e, t, lab = cells[inside], e[inside], t[inside], lab[inside]
  key = (cells[:, 2] * width + cells[:, 0]) * width + cells[:, 1]
  uniq, energy, label, inv = merge_deposits(key, e, lab, len(CLASS_NAMES))
  first = np.full(len(uniq), np.inf)
  np.minimum.at(first, inv, t)
  signal = energy >= 0.5  # the zero-suppression threshold, in MIPs
  uniq, energy, first, label = uniq[signal], energy[signal], first[signal], label[signal]
  # Noise: cells not hit, energies from the tail of a unit Gaussian above the threshold.
  n_noise = rng.binomial(max(1, int(len(uniq) / (1 - noise_fraction))), noise_fraction)
  noise_key = np.setdiff1d(rng.integers(0, width * width * num_layers, 2 * n_noise + 8), uniq)[:n_noise]
  noise_key = rng.permutation(noise_key)
  noise_e = 0.5 + np.abs(rng.normal(0, 0.25, len(noise_key)))
  noise_t = rng.uniform(-12.5, 12.5, len(noise_key)) + _IP_DISTANCE / _C_CM_PER_NS
  key = np.concatenate([uniq, noise_key])
  order = np.argsort(key, kind="stable")
  key = key[order]
  energy = np.concatenate([energy, noise_e])[order]
  time = np.concatenate([first, noise_t])[order]
  label = np.concatenate([label, np.full(len(noise_key), NOISE)])[order]
  layer, rest = key // (width * width), key % (width * width)
  coords = np.stack([rest // width, rest % width, layer], axis=1)
  centres = coords + 0.5 - np.array([half_width, half_width, 0.0])
  points = np.concatenate([centres, energy[:, None], time[:, None]], axis=1)
  return {"points": points.astype(np.float32), "labels": label.astype(np.int32), "coords": coords.astype(np.int32)}
