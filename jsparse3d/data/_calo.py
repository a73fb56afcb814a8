"""Synthetic calorimeter events with hit labels and particle (instance) ids: an HGCAL-like endcap and an HCAL-like
barrel. Both are simplified, documented detectors, not simulations of CMS: what they keep is the physics that
makes noise, electromagnetic, hadronic and MIP hits look different.

**HGCAL-like endcap** (:func:`synthetic_hgcal_event`), all silicon with square cells of ``cell`` cm (1 cm: the
real sensors have hexagonal cells of 0.5 and 1.2 cm^2) over ``[-half_width, half_width)^2``, its front face
320 cm from the interaction point:

- EM section: 28 layers, one silicon plane every 1.2 cm (z = 321.2 ... 353.6 cm), each behind 0.893 X0 of
  absorber (25 X0 and 1.3 lambda_int in all). A MIP loses 8 MeV in one such absorber.
- Hadronic section: 22 layers, one every 6 cm (z = 359.6 ... 485.6 cm), each behind 6.5 cm of steel: 3.7 X0,
  0.388 lambda_int, 74 MeV for a MIP. 9.8 lambda_int in total.
- Energies are in MIP units (what a MIP leaves in a silicon cell): a shower's energy deposited in an absorber is
  read out as that energy over the absorber's MIP loss.

The particles come from the interaction point (t = 0) towards the inner 60% of the face:

- **EM showers** (electrons and photons, 5-100 GeV log-uniform): longitudinal profile in radiation lengths
  ``t`` after the start, ``dE/dt ~ t^(a-1) exp(-b t)`` (a Gamma distribution; PDG review, "Passage of particles
  through matter", section on EM cascades) with ``b = 0.5`` and ``t_max = (a - 1) / b = ln(E / E_c) + C``,
  ``E_c = 10 MeV``, ``C = -0.5`` for electrons and ``+0.5`` for photons. Photons start after an exponential depth of
  mean 9/7 X0. Lateral profile: two components of ``g(r; R) = 2 r R^2 / (r^2 + R^2)^2`` (the form of
  Grindhammer's parameterisation), a core ``R = 0.25 R_M`` (weight 0.88) and a tail ``R = 0.8 R_M``: 90% of the
  energy lies within the Moliere radius ``R_M`` = 2.5 cm in the EM section, 4 cm in the hadronic one. A shower is
  ``40 / GeV`` equal spots (at least 20, at most 4,000), which gives it sampling fluctuations.
- **Hadrons** (charged pions, 10-200 GeV log-uniform): a MIP track up to the first interaction, at an
  exponential depth of mean 1 lambda_int (so 27% reach the hadronic section; 0.006% punch through). Then the
  cascade: an EM fraction ``f_em = 1 - (E / 1 GeV)^(-0.17)`` (Groom's power law) shared among ``1 + Poisson(2)``
  pi0 sub-showers (EM showers from the interaction vertex, each tilted by ~0.1 rad), the rest a hadronic
  component with a Gamma profile in lambda_int (``t_max = 0.2 ln(E / GeV) + 0.7`` after the vertex, scale 1),
  lateral radii 3 cm (weight 0.7) and 12 cm, its visible energy scaled by h/e = 0.6, and 20% of its spots late
  by an exponential delay of 3 ns (slow neutrons).
- **Muons**: one deposit per layer along a straight line, Landau-like (Moyal, most probable 1 MIP, width 0.12)
  times the path length ``1 / cos(theta)``.
- **Pile-up** (``pileup``, a Poisson mean): soft particles of the same bunch crossing (70% photons, 30% pions,
  1-5 GeV), each its own instance.

Readout: deposits are summed per cell; a cell takes the class and instance of the (particle, deposit type) that
put the most energy there, and the time of its earliest deposit (time of flight from the interaction point,
plus delays) smeared by ``sigma_t = sqrt((0.5 ns MIP / E)^2 + (0.02 ns)^2)``. Every cell gets Gaussian noise of
``noise_sigma`` MIPs (0.17); cells at or above ``threshold`` (0.5 MIP) are read out. A cell without a deposit
passes at the Gaussian tail's rate (0.16% per cell: about 530 noise hits in the default 80 x 80 x 50 cells),
with an energy from that tail and a time uniform over the 25 ns bunch crossing.

Classes: 0 noise, 1 hadronic (the cascade of a hadron, its pi0 sub-showers included), 2 EM, 3 MIP (muons, and
hadrons before their first interaction). Instances: the particle's index in the event, -1 for noise.

**HCAL-like barrel** (:func:`synthetic_hcal_event`), after the toy calorimeter of the MIT calo-cluster study: a
cylinder of 4 depth layers at radii 185, 205, 230 and 265 cm, towers of 0.087 x 0.087 in (eta, phi), |eta| <
1.392. A Poisson number of clusters (mean 10) with exponential energies (mean 5 GeV); each has ``1 + Poisson(2
E / GeV)`` deposits spread around its (eta, phi) centre (Gaussian, 0.06) over the depths (40/30/20/10%), the
cluster's energy shared among them. Noise: a Poisson number of towers (mean 30) with exponential energies (mean
0.25 GeV). Signal times are the time of flight with 1 ns resolution, noise times uniform over 25 ns. Cells below
0.1 GeV are not read out. Energies in GeV. Classes: 0 noise, 1 signal.
"""

from __future__ import annotations

import math

import numpy as np

from jsparse3d.data._deposits import merge_deposits

NOISE, HADRONIC, EM, MIP = range(4)
HGCAL_CLASS_NAMES = ("noise", "HAD", "EM", "MIP")
HCAL_CLASS_NAMES = ("noise", "signal")
C_CM_PER_NS = 29.9792458
BUNCH_NS = 25.0

# -- the HGCAL-like stack: layer i's silicon plane sits at LAYER_Z[i], behind absorber i ------------------------
EM_LAYERS, HAD_LAYERS = 28, 22
Z_FRONT = 320.0
LAYER_Z = np.concatenate([Z_FRONT + 1.2 * np.arange(1, EM_LAYERS + 1),
                          Z_FRONT + 1.2 * EM_LAYERS + 6.0 * np.arange(1, HAD_LAYERS + 1)])
LAYER_X0 = np.array([25.0 / EM_LAYERS] * EM_LAYERS + [3.7] * HAD_LAYERS)
LAYER_LAMBDA = np.array([1.3 / EM_LAYERS] * EM_LAYERS + [0.388] * HAD_LAYERS)
LAYER_MIP_GEV = np.array([0.008] * EM_LAYERS + [0.074] * HAD_LAYERS)
LAYER_MOLIERE_CM = np.array([2.5] * EM_LAYERS + [4.0] * HAD_LAYERS)
NUM_LAYERS = EM_LAYERS + HAD_LAYERS
# Depth at the back of each absorber (edges[i + 1]), in X0, lambda_int and z.
X0_EDGES = np.concatenate([[0.0], np.cumsum(LAYER_X0)])
LAMBDA_EDGES = np.concatenate([[0.0], np.cumsum(LAYER_LAMBDA)])
Z_EDGES = np.concatenate([[Z_FRONT], LAYER_Z])

EM_B, EM_CRITICAL_GEV = 0.5, 0.010
EM_CORE, EM_CORE_WEIGHT, EM_TAIL = 0.25, 0.88, 0.8  # radii in Moliere radii
SPOTS_PER_GEV = 40
HAD_F_EM_EXPONENT, H_OVER_E = -0.17, 0.6
HAD_CORE_CM, HAD_CORE_WEIGHT, HAD_TAIL_CM = 3.0, 0.7, 12.0


def em_profile_shape(energy_gev, photon: bool) -> float:
  """``a`` of the Gamma longitudinal profile (``b`` = 0.5 per X0) of an EM shower of ``energy_gev``."""
  t_max = math.log(energy_gev / EM_CRITICAL_GEV) + (0.5 if photon else -0.5)
  return max(EM_B * t_max + 1.0, 1.1)


def _radii(rng, n, core, core_weight, tail):
  """Radial distances from the two-component profile ``w g(r; core) + (1 - w) g(r; tail)``, by inversion:
  ``g``'s distribution function is ``r^2 / (r^2 + R^2)``."""
  radius = np.where(rng.random(n) < core_weight, core, tail)
  u = rng.random(n)
  return radius * np.sqrt(u / (1.0 - u))


class _Deposits:
  """Energy deposits of one event: cell position, layer, energy (MIP), time (ns), particle and class."""

  def __init__(self):
    self.parts = []

  def add(self, x, y, layer, energy, time, particle, label):
    n = len(layer)
    self.parts.append((x, y, layer, energy, time, np.full(n, particle), np.full(n, label)))

  def arrays(self):
    if not self.parts:
      return [np.zeros(0)] * 7
    return [np.concatenate(col) for col in zip(*self.parts)]


def _line_at(origin, direction, z):
  """x, y where the line through ``origin`` along ``direction`` crosses the planes ``z``."""
  s = (z - origin[2]) / direction[2]
  return origin[0] + s * direction[0], origin[1] + s * direction[1]


def _spread(rng, deposits, origin, direction, layer, energy_gev, delay, radii, particle, label):
  """Adds shower spots at ``layer`` around the axis, each ``energy_gev``, read out in MIPs of its absorber."""
  inside = (layer >= 0) & (layer < NUM_LAYERS)  # the rest leaks out of the back
  layer, energy_gev, radii, delay = layer[inside], energy_gev[inside], radii[inside], delay[inside]
  z = LAYER_Z[layer]
  x, y = _line_at(origin, direction, z)
  phi = rng.uniform(0.0, 2 * np.pi, len(layer))
  flight = np.linalg.norm(np.stack([x, y, z]), axis=0) / C_CM_PER_NS
  deposits.add(x + radii * np.cos(phi), y + radii * np.sin(phi), layer, energy_gev / LAYER_MIP_GEV[layer],
               flight + delay, particle, label)


def _layer_of_x0(depth):
  return np.searchsorted(X0_EDGES, depth, side="right") - 1


def _em_shower(rng, deposits, origin, direction, start_x0, energy_gev, *, photon, particle, label):
  """An EM shower of ``energy_gev`` starting ``start_x0`` X0 deep along ``direction`` from ``origin``."""
  if photon:
    start_x0 = start_x0 + rng.exponential(9.0 / 7.0)
  n = int(np.clip(SPOTS_PER_GEV * energy_gev, 20, 4000))
  depth = start_x0 + rng.gamma(em_profile_shape(energy_gev, photon), 1.0 / EM_B, n)
  layer = _layer_of_x0(depth)
  moliere = LAYER_MOLIERE_CM[np.clip(layer, 0, NUM_LAYERS - 1)]
  radii = _radii(rng, n, EM_CORE * moliere, EM_CORE_WEIGHT, EM_TAIL * moliere)
  _spread(rng, deposits, origin, direction, layer, np.full(n, energy_gev / n), np.zeros(n), radii, particle, label)


def _track(rng, deposits, direction, layers, particle, label):
  """MIP deposits (Moyal energies around 1 MIP, times the path length) on ``layers`` along a line from the IP."""
  z = LAYER_Z[layers]
  x, y = _line_at(np.zeros(3), direction, z)
  moyal = -np.log(rng.standard_normal(len(layers)) ** 2 + 1e-12)
  energy = np.clip(1.0 + 0.12 * moyal, 0.3, 20.0) / direction[2]
  flight = np.linalg.norm(np.stack([x, y, z]), axis=0) / C_CM_PER_NS
  deposits.add(x, y, layers, energy, flight, particle, label)


def _hadron(rng, deposits, direction, energy_gev, particle):
  """A charged pion: a MIP track to its first interaction, then the hadronic cascade."""
  vertex_lambda = rng.exponential(1.0)
  before = np.flatnonzero(LAMBDA_EDGES[1:] <= vertex_lambda)
  _track(rng, deposits, direction, before, particle, MIP)
  if vertex_lambda >= LAMBDA_EDGES[-1]:
    return  # punched through
  vertex_x0 = np.interp(vertex_lambda, LAMBDA_EDGES, X0_EDGES)
  vertex_z = np.interp(vertex_lambda, LAMBDA_EDGES, Z_EDGES)
  vertex = np.array([*_line_at(np.zeros(3), direction, vertex_z), vertex_z])
  f_em = 1.0 - energy_gev ** HAD_F_EM_EXPONENT
  pi0 = 1 + rng.poisson(2.0)
  for share in rng.dirichlet(np.ones(pi0)) * f_em * energy_gev:
    tilted = direction + np.array([*rng.normal(0.0, 0.1, 2), 0.0])
    _em_shower(rng, deposits, vertex, tilted / np.linalg.norm(tilted), vertex_x0, max(share, 0.05), photon=True,
               particle=particle, label=HADRONIC)
  visible = (1.0 - f_em) * energy_gev * H_OVER_E
  n = int(np.clip(SPOTS_PER_GEV * visible, 20, 4000))
  t_max = 0.2 * math.log(energy_gev) + 0.7
  depth_lambda = vertex_lambda + rng.gamma(t_max + 1.0, 1.0, n)
  layer = np.searchsorted(LAMBDA_EDGES, depth_lambda, side="right") - 1
  delay = rng.exponential(3.0, n) * (rng.random(n) < 0.2)
  radii = _radii(rng, n, HAD_CORE_CM, HAD_CORE_WEIGHT, HAD_TAIL_CM)
  _spread(rng, deposits, vertex, direction, layer, np.full(n, visible / n), delay, radii, particle, HADRONIC)


def _towards_face(rng, half_width):
  """A direction from the interaction point to a random point of the inner 60% of the front face."""
  target = np.array([*rng.uniform(-0.6 * half_width, 0.6 * half_width, 2), Z_FRONT])
  return target / np.linalg.norm(target)


def _gaussian_tail(rng, n, start):
  """``n`` draws of a unit Gaussian conditioned on being >= ``start`` (> 0): exponential proposals with rate
  ``start``, accepted with probability ``exp(-(z - start)^2 / 2)`` (Robert's method)."""
  out = np.zeros(0)
  while len(out) < n:
    z = start + rng.exponential(1.0 / start, 2 * (n - len(out)) + 8)
    out = np.concatenate([out, z[rng.random(len(z)) < np.exp(-0.5 * (z - start) ** 2)]])
  return out[:n]


def noise_probability(noise_sigma: float, threshold: float) -> float:
  """The chance that a cell without a deposit is read out: the Gaussian tail above ``threshold``."""
  return 0.5 * math.erfc(threshold / (noise_sigma * math.sqrt(2.0)))


PARTICLE_KINDS = ("electron", "photon", "pion", "muon")


def synthetic_hgcal_event(seed, *, particles=None, pileup: float = 0.0, noise: bool = True,
                          noise_sigma: float = 0.17, threshold: float = 0.5, half_width: float = 40.0,
                          cell: float = 1.0) -> dict:
  """One event of the HGCAL-like endcap calorimeter described in this module.

  Args:
    seed: int or sequence of ints; the same seed gives the same event.
    particles: ``[(kind, energy_gev), ...]`` with kind in ``"electron", "photon", "pion", "muon"``, shot at the
      face; default a random mix (1-3 electrons or photons, 0-2 pions, 0-2 muons).
    pileup: mean number of soft pile-up particles. noise: add electronic noise (and noise hits).
    noise_sigma, threshold: per-cell noise and the readout threshold, in MIPs.
    half_width, cell: the transverse extent and cell size, in cm.
  Returns:
    dict with ``points`` float32[N, 5] (x, y, z in cm at cell centres, E in MIPs, t in ns), ``labels`` int32[N]
    (0 noise, 1 HAD, 2 EM, 3 MIP), ``instances`` int32[N] (particle index, -1 for noise), ``coords`` int32[N, 3]
    (cell indices x, y and the layer), ``particles`` (the kinds and energies shot, in instance order).

  Example:
    >>> ev = synthetic_hgcal_event(0, particles=[("electron", 50.0)], noise=False)
    >>> sorted(set(ev["labels"].tolist()))
    [2]
  """
  if noise_sigma <= 0 or threshold <= 0:
    raise ValueError(f"noise_sigma and threshold must be positive MIP values, got {noise_sigma} and {threshold}.")
  if half_width <= 0 or cell <= 0:
    raise ValueError(f"half_width and cell must be positive (cm), got {half_width} and {cell}.")
  rng = np.random.default_rng(seed)
  if particles is None:
    particles = ([(("electron", "photon")[rng.integers(2)], math.exp(rng.uniform(math.log(5), math.log(100))))
                  for _ in range(rng.integers(1, 4))]
                 + [("pion", math.exp(rng.uniform(math.log(10), math.log(200)))) for _ in range(rng.integers(0, 3))]
                 + [("muon", 0.0) for _ in range(rng.integers(0, 3))])
  particles = list(particles)
  for _ in range(rng.poisson(pileup) if pileup > 0 else 0):
    particles.append(("photon" if rng.random() < 0.7 else "pion", rng.uniform(1.0, 5.0)))
  deposits = _Deposits()
  for index, (kind, energy) in enumerate(particles):
    if kind not in PARTICLE_KINDS:
      raise ValueError(f"particle kind {kind!r} is not one of {PARTICLE_KINDS}.")
    if kind != "muon" and not energy > 0:
      raise ValueError(f"particle {index} ({kind}) needs a positive energy in GeV, got {energy}.")
    direction = _towards_face(rng, half_width)
    if kind == "muon":
      _track(rng, deposits, direction, np.arange(NUM_LAYERS), index, MIP)
    elif kind == "pion":
      _hadron(rng, deposits, direction, energy, index)
    else:
      _em_shower(rng, deposits, np.zeros(3), direction, 0.0, energy, photon=kind == "photon", particle=index,
                 label=EM)

  x, y, layer, energy, time, particle, label = deposits.arrays()
  width = int(round(2 * half_width / cell))
  ix, iy = np.floor((x + half_width) / cell), np.floor((y + half_width) / cell)
  inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < width)
  key = ((layer[inside].astype(np.int64) * width + ix[inside].astype(np.int64)) * width
         + iy[inside].astype(np.int64))
  contributor = particle[inside].astype(np.int64) * 4 + label[inside].astype(np.int64)
  cells, total, best, inverse = merge_deposits(key, energy[inside], contributor, 4 * max(len(particles), 1))
  first = np.full(len(cells), np.inf)
  np.minimum.at(first, inverse, time[inside])
  if noise:
    total = total + rng.normal(0.0, noise_sigma, len(cells))
  read = total >= threshold
  cells_read, total, first, best = cells[read], total[read], first[read], best[read]
  first = first + rng.normal(0.0, 1.0, len(first)) * np.sqrt((0.5 / total) ** 2 + 0.02 ** 2)
  labels, instances = best % 4, best // 4
  if noise:
    free = width * width * NUM_LAYERS - len(cells)
    count = rng.binomial(free, noise_probability(noise_sigma, threshold))
    noise_keys = np.zeros(0, np.int64)
    while len(noise_keys) < count:  # distinct cells without a deposit
      draw = rng.integers(0, width * width * NUM_LAYERS, 2 * (count - len(noise_keys)) + 8)
      noise_keys = np.union1d(noise_keys, np.setdiff1d(draw, cells))
    noise_keys = rng.permutation(noise_keys)[:count]
    cells_read = np.concatenate([cells_read, noise_keys])
    total = np.concatenate([total, noise_sigma * _gaussian_tail(rng, count, threshold / noise_sigma)])
    first = np.concatenate([first, rng.uniform(0.0, BUNCH_NS, count)])
    labels = np.concatenate([labels, np.full(count, NOISE)])
    instances = np.concatenate([instances, np.full(count, -1)])
  order = np.argsort(cells_read, kind="stable")
  cells_read = cells_read[order]
  layer, rest = cells_read // (width * width), cells_read % (width * width)
  coords = np.stack([rest // width, rest % width, layer], axis=1)
  xyz = np.stack([(coords[:, 0] + 0.5) * cell - half_width, (coords[:, 1] + 0.5) * cell - half_width,
                  LAYER_Z[layer]], axis=1)
  points = np.concatenate([xyz, total[order, None], first[order, None]], axis=1)
  kinds = np.array([PARTICLE_KINDS.index(k) for k, _ in particles], np.int32)
  return {"points": points.astype(np.float32), "labels": labels[order].astype(np.int32),
          "instances": instances[order].astype(np.int32), "coords": coords.astype(np.int32),
          "particles": {"kind": kinds, "energy": np.array([e for _, e in particles], np.float32)}}


# -- the HCAL-like barrel --------------------------------------------------------------------------------------
HCAL_RADII = np.array([185.0, 205.0, 230.0, 265.0])
HCAL_DEPTH_SHARE = np.array([0.4, 0.3, 0.2, 0.1])
HCAL_TOWER = 0.087
HCAL_ETA_TOWERS, HCAL_PHI_TOWERS = 32, 72  # |eta| < 16 x 0.087 = 1.392


def synthetic_hcal_event(seed, *, clusters_mean: float = 10.0, cluster_energy_gev: float = 5.0,
                         hits_per_gev: float = 2.0, noise_mean: float = 30.0, noise_energy_gev: float = 0.25,
                         threshold_gev: float = 0.1) -> dict:
  """One event of the HCAL-like barrel described in this module.

  Args:
    seed: int or sequence of ints.
    clusters_mean, cluster_energy_gev, hits_per_gev: Poisson mean of clusters, their mean (exponential) energy,
      and deposits per GeV (plus one).
    noise_mean, noise_energy_gev: Poisson mean of noise towers and their mean (exponential) energy.
    threshold_gev: cells below it are not read out.
  Returns:
    dict with ``points`` float32[N, 5] (x, y, z in cm at tower centres, E in GeV, t in ns), ``labels`` int32[N]
    (0 noise, 1 signal), ``instances`` int32[N] (cluster index, -1 for noise), ``coords`` int32[N, 3] (eta
    tower, phi tower, depth).

  Example:
    >>> ev = synthetic_hcal_event(0)
    >>> ev["points"].shape[1], sorted(set(ev["labels"].tolist()))
    (5, [0, 1])
  """
  if threshold_gev <= 0 or cluster_energy_gev <= 0 or noise_energy_gev <= 0:
    raise ValueError("threshold_gev, cluster_energy_gev and noise_energy_gev must be positive (GeV).")
  rng = np.random.default_rng(seed)
  half = HCAL_ETA_TOWERS * HCAL_TOWER / 2
  eta, phi, depth, energy, owner = [], [], [], [], []
  for c in range(rng.poisson(clusters_mean)):
    e = rng.exponential(cluster_energy_gev)
    n = 1 + rng.poisson(hits_per_gev * e)
    centre = rng.uniform(-half, half), rng.uniform(-np.pi, np.pi)
    eta.append(centre[0] + rng.normal(0.0, 0.06, n))
    phi.append(centre[1] + rng.normal(0.0, 0.06, n))
    depth.append(rng.choice(4, n, p=HCAL_DEPTH_SHARE))
    energy.append(rng.dirichlet(np.ones(n)) * e)
    owner.append(np.full(n, c))
  if eta:
    eta, phi, depth, energy, owner = map(np.concatenate, (eta, phi, depth, energy, owner))
    ieta = np.floor((eta + half) / HCAL_TOWER).astype(np.int64)
    iphi = np.floor((phi + np.pi) / (2 * np.pi) * HCAL_PHI_TOWERS).astype(np.int64) % HCAL_PHI_TOWERS
    inside = (ieta >= 0) & (ieta < HCAL_ETA_TOWERS)
    key = (depth[inside] * HCAL_ETA_TOWERS + ieta[inside]) * HCAL_PHI_TOWERS + iphi[inside]
    cells, total, best, _ = merge_deposits(key, energy[inside], owner[inside], int(owner.max()) + 1)
  else:
    cells, total, best = np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
  read = total >= threshold_gev
  cells, total, best = cells[read], total[read], best[read]
  num_cells = 4 * HCAL_ETA_TOWERS * HCAL_PHI_TOWERS
  noise_cells = np.setdiff1d(rng.choice(num_cells, min(rng.poisson(noise_mean), num_cells), replace=False), cells)
  noise_energy = threshold_gev + rng.exponential(noise_energy_gev, len(noise_cells))
  keys = np.concatenate([cells, noise_cells])
  order = np.argsort(keys, kind="stable")
  keys = keys[order]
  total = np.concatenate([total, noise_energy])[order]
  labels = np.concatenate([np.ones(len(cells), np.int64), np.zeros(len(noise_cells), np.int64)])[order]
  instances = np.concatenate([best, np.full(len(noise_cells), -1)])[order]
  depth_i, rest = keys // (HCAL_ETA_TOWERS * HCAL_PHI_TOWERS), keys % (HCAL_ETA_TOWERS * HCAL_PHI_TOWERS)
  ieta, iphi = rest // HCAL_PHI_TOWERS, rest % HCAL_PHI_TOWERS
  eta_c = (ieta + 0.5) * HCAL_TOWER - half
  phi_c = (iphi + 0.5) / HCAL_PHI_TOWERS * 2 * np.pi - np.pi
  r = HCAL_RADII[depth_i]
  xyz = np.stack([r * np.cos(phi_c), r * np.sin(phi_c), r * np.sinh(eta_c)], axis=1)
  flight = np.linalg.norm(xyz, axis=1) / C_CM_PER_NS
  time = np.where(labels == 1, flight + rng.normal(0.0, 1.0, len(keys)), rng.uniform(0.0, BUNCH_NS, len(keys)))
  points = np.concatenate([xyz, total[:, None], time[:, None]], axis=1)
  return {"points": points.astype(np.float32), "labels": labels.astype(np.int32),
          "instances": instances.astype(np.int32),
          "coords": np.stack([ieta, iphi, depth_i], axis=1).astype(np.int32)}


class _Synthetic:
  """A dataset of ``num_events`` generated events: ``ds[i]`` is ``generate((seed, i), **options)``; events are
  made on access, so the dataset holds no memory and seeds give disjoint, reproducible splits."""

  generate = None

  def __init__(self, num_events: int, *, seed: int = 0, **options):
    if num_events < 1:
      raise ValueError(f"num_events must be positive, got {num_events}.")
    self.num_events, self.seed, self.options = num_events, seed, options
    type(self).generate(0, **options)  # bad options fail here, not in a loader thread

  def __len__(self) -> int:
    return self.num_events

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.num_events:
      raise IndexError(f"event {i} out of range for a dataset of {self.num_events} events.")
    return type(self).generate((self.seed, int(i)), **self.options)


class SyntheticHGCAL(_Synthetic):
  """``num_events`` events of :func:`synthetic_hgcal_event` (its keyword options pass through)."""
  generate = staticmethod(synthetic_hgcal_event)
  class_names = HGCAL_CLASS_NAMES


class SyntheticHCAL(_Synthetic):
  """``num_events`` events of :func:`synthetic_hcal_event` (its keyword options pass through)."""
  generate = staticmethod(synthetic_hcal_event)
  class_names = HCAL_CLASS_NAMES


def calo_features(event: dict, *, centre, scale, energy_unit: float = 1.0) -> dict:
  """The network inputs of a calorimeter event: ``event`` plus ``feats`` float32[N, 5] =
  ``((x, y, z) - centre[:3]) / scale[:3]``, ``log(E / energy_unit)``, ``(t - centre[3]) / scale[3]``.

  Scaling x, y, z by the detector's half extents puts them in [-1, 1] (what ``PVCNN("calo")`` voxelizes); the
  log brings energies spanning four decades to a few units.

  Args:
    event: with ``points`` [N, 5] (x, y, z, E, t). centre, scale: 4 numbers each (x, y, z, t).
    energy_unit: the energy that maps to 0 (1 MIP for HGCAL-like events, 1 GeV for HCAL-like ones).

  Example:
    >>> ev = calo_features(synthetic_hcal_event(0), centre=(0, 0, 0, 12.5), scale=(300, 300, 400, 12.5))
    >>> ev["feats"].shape[1]
    5
  """
  centre, scale = np.asarray(centre, np.float64), np.asarray(scale, np.float64)
  if centre.shape != (4,) or scale.shape != (4,) or np.any(scale <= 0) or energy_unit <= 0:
    raise ValueError(f"centre and scale need 4 numbers (x, y, z, t) with positive scales and a positive energy_unit, "
                     f"got {centre.tolist()}, {scale.tolist()}, {energy_unit}.")
  p = np.asarray(event["points"], np.float64)
  if np.any(p[:, 3] <= 0):
    raise ValueError("calorimeter hits need positive energies (the features take their log); drop the others.")
  feats = np.concatenate([(p[:, :3] - centre[:3]) / scale[:3], np.log(p[:, 3:4] / energy_unit),
                          (p[:, 4:5] - centre[3]) / scale[3]], axis=1)
  return {**event, "feats": feats.astype(np.float32)}
