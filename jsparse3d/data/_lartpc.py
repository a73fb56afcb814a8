"""A seeded generator of realistic LArTPC events: tracks, showers, delta rays and Michel electrons in a voxel cube.

Particles are stepped so that each step advances exactly one voxel along its dominant axis: every track is a
26-connected line one voxel wide, and a MIP leaves 0.63 MeV in a voxel it crosses along an axis and up to 1.09 MeV
on a diagonal. Each step deposits its energy in the voxel of its midpoint; the deposits are summed per voxel, and
each voxel takes the kind that deposited most of its energy.

Physics, in the units of DOMAIN.md (3 mm voxels, MeV, cm):
- Ionisation follows the residual range: muons and pions keep ~2.1 MeV/cm until a short rise at the stop;
  protons follow the Bragg-Kleeman rule (range ~ T^1.75: 7.7 cm at 100 MeV) and rise to a Bragg peak. Energies
  are *visible* deposits after a Birks-type recombination factor that leaves minimum-ionising particles unchanged
  (2.1 MeV/cm is 0.63 MeV per straight voxel), which caps the Bragg peak at 5-10x a MIP voxel.
- Multiple scattering is the Highland angle per step, from the momentum left, so tracks bend as they slow down.
- Electrons ionise at 2.1 MeV/cm and radiate bremsstrahlung photons (a 1/y spectrum, E/X0 per unit length, X0 =
  14 cm); photons above 10 MeV convert to pairs after an exponential distance (mean 9/7 X0), softer ones Compton
  scatter in isolated blobs and are finally absorbed. The cascade branches on the X0 scale.
- Delta rays: knock-on electrons above 2 MeV along muon and proton tracks (the 1/T^2 spectrum of the Bethe
  formula, about 5 per metre), emitted forward at their kinematic angle.
- Michel electrons: a muon that stops inside the volume decays (probability 0.75) into an electron with the
  x^2 (3 - 2x) spectrum up to 52.8 MeV; its ionisation is Michel, its radiated photons are shower.
- Topology: one or more vertices with 1-10 particles (muons, pions, protons, electrons, photons; isotropic, flat
  kinetic energy) and independent "rain" tracks (cosmic-like muons crossing the volume, protons).
"""

from __future__ import annotations

import math

import numpy as np

from jsparse3d.data import _schemes
from jsparse3d.data._deposits import merge_deposits
from jsparse3d.data._schemes import DELTA
from jsparse3d.data._schemes import HIP
from jsparse3d.data._schemes import LESCATTER
from jsparse3d.data._schemes import MICHEL
from jsparse3d.data._schemes import MIP
from jsparse3d.data._schemes import NUM_KINDS
from jsparse3d.data._schemes import SHOWER

PITCH_CM = 0.3
STEP_CM = 0.345             # the mean step length (one voxel along the dominant axis of a random direction)
MIP_DEDX = 2.1              # MeV/cm
X0_CM = 14.0
BIRKS_K = 0.04              # cm/MeV
M_E, M_MU, M_PI, M_P = 0.511, 105.66, 139.57, 938.27
MICHEL_MAX = 52.8
PAIR_THRESHOLD = 10.0       # MeV: photons above convert to pairs, below Compton scatter
DELTA_MIN = 2.0             # MeV
THRESHOLD = 0.02            # MeV: voxels below are dropped
_HIGHLAND = 13.6 * np.sqrt(STEP_CM / X0_CM) * (1 + 0.038 * np.log(STEP_CM / X0_CM))  # MeV, times 1 / (beta p)
_BK_ALPHA = 0.00244         # proton range = alpha * T^1.75 (cm, MeV)


def _visible(dedx):
  """Birks-type recombination: visible dE/dx, equal to the true one for a MIP."""
  return dedx * (1 + BIRKS_K * MIP_DEDX) / (1 + BIRKS_K * dedx)


def _range_cm(t, mass):
  """CSDA range of a muon-like (mass < 500 MeV) or proton-like particle of kinetic energy t."""
  if mass > 500:
    return _BK_ALPHA * t ** 1.75
  u = t * M_MU / mass  # range scales as M f(T / M)
  return (u * u / (MIP_DEDX * (u + 40.0))) * mass / M_MU


def _kinetic_at(residual_cm, mass):
  """Kinetic energy with ``residual_cm`` of range left (inverse of :func:`_range_cm`)."""
  if mass > 500:
    return (np.maximum(residual_cm, 1e-4) / _BK_ALPHA) ** (1 / 1.75)
  r = np.maximum(residual_cm, 1e-4) * M_MU / mass
  # u^2 = 2.1 r (u + 40): the positive root.
  u = 0.5 * (MIP_DEDX * r + np.sqrt((MIP_DEDX * r) ** 2 + 4 * MIP_DEDX * r * 40.0))
  return u * mass / M_MU


def _beta_p(t, mass):
  """beta * p (MeV) of a particle of kinetic energy t."""
  return t * (t + 2 * mass) / (t + mass)


def _unit(v):
  """Rows of ``v`` scaled to unit length."""
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


# Single 3-vectors below use plain float arithmetic: numpy's per-call overhead dominates at this size.


def _isotropic(rng):
  x, y, z = rng.normal(size=3)
  n = math.sqrt(x * x + y * y + z * z)
  return np.array([x / n, y / n, z / n])


def _deflect(rng, direction, cos_theta):
  """``direction`` turned by the polar angle ``arccos(cos_theta)`` about a random azimuth."""
  dx, dy, dz = direction
  rx, ry, rz = rng.normal(size=3)
  ox, oy, oz = dy * rz - dz * ry, dz * rx - dx * rz, dx * ry - dy * rx  # perpendicular to direction
  n = math.sqrt(ox * ox + oy * oy + oz * oz) or 1.0
  s = math.sqrt(max(0.0, 1.0 - cos_theta * cos_theta)) / n
  x, y, z = cos_theta * dx + s * ox, cos_theta * dy + s * oy, cos_theta * dz + s * oz
  m = math.sqrt(x * x + y * y + z * z)
  return np.array([x / m, y / m, z / m])


class _Event:
  """Energy samples (position in voxels, MeV, kind) and the particles still to be stepped."""

  def __init__(self, rng, size):
    self.rng, self.size = rng, size
    self.pos, self.energy, self.kind = [], [], []
    self.electrons = []  # (start, direction, energy, kind, photon Compton kind)
    self.photons = []    # (start, direction, energy, Compton kind)

  def deposit(self, pos, energy, kind):
    self.pos.append(pos)
    self.energy.append(energy)
    self.kind.append(np.full(len(energy), kind, np.int8))

  def inside(self, p, margin=0.0):
    x, y, z = p
    lo, hi = -margin, self.size + margin
    return lo <= x < hi and lo <= y < hi and lo <= z < hi

  def walk(self, start, direction, theta):
    """A path of ``len(theta)`` steps whose direction performs a Gaussian random walk (per-step rms angle
    ``theta``, radians). Each step advances one voxel along its dominant axis.

    Returns:
      ``(midpoints [n, 3] in voxels, directions [n, 3], lengths [n] in cm)``.
    """
    n = len(theta)
    kicks = self.rng.normal(size=(n, 3)) * theta[:, None]
    dirs = _unit(direction[None, :] + np.cumsum(kicks, axis=0))
    lengths = 1.0 / np.abs(dirs).max(axis=1)
    moves = dirs * lengths[:, None]
    pos = start[None, :] + np.cumsum(moves, axis=0) - 0.5 * moves
    return pos, dirs, lengths * PITCH_CM

  def steps_inside(self, start, direction, n):
    """At most ``n`` steps, cut where a straight path from ``start`` has left the volume for good (tracks scatter
    little before that)."""
    with np.errstate(divide="ignore", invalid="ignore"):
      t_exit = np.where(direction > 0, (self.size - start) / direction,
                        np.where(direction < 0, -start / direction, np.inf))
    return int(min(n, np.ceil(np.min(t_exit)) + 8))

  # -- heavy particles --------------------------------------------------------------------------------------

  def track(self, start, direction, kinetic, mass, kind, deltas=True):
    """A muon, pion or proton; returns (end position, end direction, whether it stopped inside the volume)."""
    total = _range_cm(kinetic, mass)
    n = self.steps_inside(start, direction, int(np.ceil(total / PITCH_CM)) + 1)
    # The scattering angle from the nominal momentum at each step, then the exact residual range of each step.
    t_nominal = _kinetic_at(total - (np.arange(n) + 0.5) * STEP_CM, mass)
    pos, dirs, length = self.walk(start, direction, _HIGHLAND / _beta_p(t_nominal, mass))
    travelled = np.cumsum(length)
    n = min(n, int(np.searchsorted(travelled, total)) + 1)  # the step in which the range ends
    pos, dirs, length, travelled = pos[:n], dirs[:n], length[:n], travelled[:n]
    stopped_here = travelled[-1] >= total
    if stopped_here:
      length[-1] -= travelled[-1] - total
      travelled[-1] = total
    t = _kinetic_at(total - travelled + 0.5 * length, mass)
    if mass > 500:
      dedx = t ** -0.75 / (1.75 * _BK_ALPHA)
    else:
      u = t * M_MU / mass
      dedx = MIP_DEDX * (u + 40.0) ** 2 / (u * u + 80.0 * u)
    self.deposit(pos, _visible(dedx) * length, kind)
    if deltas:
      self._deltas(pos, dirs, length, t, mass)
    return pos[-1], dirs[-1], bool(stopped_here and self.inside(pos[-1]))

  def _deltas(self, pos, dirs, length, t, mass):
    """Knock-on electrons along a track: rate K/2 Z/A rho (1/T_min - 1/T_max) per cm."""
    gamma = 1 + t / mass
    beta2 = 1 - 1 / gamma ** 2
    t_max = np.minimum(2 * M_E * beta2 * gamma ** 2 / (1 + 2 * gamma * M_E / mass + (M_E / mass) ** 2), 200.0)
    rate = 0.0964 / beta2 * np.clip(1 / DELTA_MIN - 1 / t_max, 0, None) * length
    hits = np.flatnonzero(self.rng.random(len(rate)) < rate)
    for i in hits:
      if not self.inside(pos[i]):
        continue
      u = self.rng.random()
      energy = 1 / (1 / DELTA_MIN - u * (1 / DELTA_MIN - 1 / t_max[i]))
      cos_theta = min(1.0, np.sqrt(energy * (1 + 2 * M_E / (t_max[i] + 1e-9)) / (energy + 2 * M_E)))
      self.electrons.append((pos[i], _deflect(self.rng, dirs[i], cos_theta), energy, DELTA, LESCATTER))

  def michel(self, position):
    while True:
      x = self.rng.random()
      if self.rng.random() < x * x * (3 - 2 * x):
        break
    self.electrons.append((position, _isotropic(self.rng), x * MICHEL_MAX, MICHEL, SHOWER))

  # -- electromagnetic ------------------------------------------------------------------------------------

  def run_cascades(self):
    while self.electrons or self.photons:
      while self.electrons:
        self._electron(*self.electrons.pop())
      while self.photons:
        self._photon(*self.photons.pop())

  def _electron(self, start, direction, energy, kind, compton_kind):
    if not self.inside(start, margin=20):
      return
    if energy < 3.0:  # short and wiggly: ionisation only
      n = max(1, int(round(energy / MIP_DEDX / STEP_CM)))
      if n == 1:  # below ~1 MeV: a single voxel
        self.deposit(start[None, :], np.array([energy]), kind)
        return
      pos, _, _ = self.walk(start, direction, np.full(n, 0.35))
      self.deposit(pos, np.full(n, energy / n), kind)
      return
    n = self.steps_inside(start, direction, int(np.ceil(energy / MIP_DEDX / PITCH_CM)) + 1)
    # Bremsstrahlung: photons take a fraction y ~ 1/y of the current energy, E/X0 lost per unit length.
    y_min = min(0.5, 0.5 / energy)
    mean_y = (1 - y_min) / np.log(1 / y_min)
    emit = self.rng.random(n) < STEP_CM / X0_CM / mean_y
    y = np.where(emit, y_min ** (1 - self.rng.random(n)), 0.0)
    kept = energy * np.cumprod(1 - y)  # before ionisation losses
    nominal = np.maximum(kept - MIP_DEDX * STEP_CM * np.arange(n), 0.5)
    pos, dirs, length = self.walk(start, direction, np.minimum(_HIGHLAND / nominal, 0.5))
    left = kept - MIP_DEDX * np.cumsum(length)
    alive = np.flatnonzero(left > 0)
    n = int(alive[-1]) + 2 if alive.size else 1  # the last step spends what is left
    n = min(n, len(left))
    ionisation = MIP_DEDX * length[:n]
    ionisation[-1] = max(0.0, min(ionisation[-1], left[n - 2] if n > 1 else energy))
    self.deposit(pos[:n], ionisation, kind)
    before = np.concatenate([[energy], left[:n - 1]])
    for i in np.flatnonzero(emit[:n]):
      e_gamma = max(before[i], 0.0) * y[i]
      if e_gamma > 0.2:
        self.photons.append((pos[i], dirs[i], e_gamma, compton_kind))

  def _photon(self, start, direction, energy, compton_kind):
    pos = start
    while energy > 0.2:
      mean_free = 9 / 7 * X0_CM if energy > PAIR_THRESHOLD else 12.0
      pos = pos + direction * self.rng.exponential(mean_free) / PITCH_CM
      if not self.inside(pos):
        return
      if energy > PAIR_THRESHOLD:
        share = self.rng.uniform(0.05, 0.95)
        for part in (share, 1 - share):
          cos_theta = np.cos(min(1.0, M_E / (part * energy)) * self.rng.random())
          self.electrons.append((pos, _deflect(self.rng, direction, cos_theta), part * energy, SHOWER,
                                compton_kind))
        return
      recoil = energy * self.rng.uniform(0.15, 0.75)
      self.electrons.append((pos, _deflect(self.rng, direction, self.rng.uniform(0.3, 1.0)), recoil, compton_kind,
                             compton_kind))
      energy -= recoil
      direction = _deflect(self.rng, direction, self.rng.uniform(-0.5, 1.0))
    if energy > 0.05:
      self.electrons.append((pos, direction, energy, compton_kind, compton_kind))

  # -- output ---------------------------------------------------------------------------------------------

  def voxels(self):
    if not self.pos:
      return np.zeros((0, 3), np.int32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    pos = np.concatenate(self.pos)
    energy = np.concatenate(self.energy)
    kind = np.concatenate(self.kind).astype(np.int64)
    v = np.floor(pos).astype(np.int64)
    keep = np.all((v >= 0) & (v < self.size), axis=1) & (energy > 0)
    v, energy, kind = v[keep], energy[keep], kind[keep]
    key = (v[:, 0] * self.size + v[:, 1]) * self.size + v[:, 2]
    uniq, total, kinds, _ = merge_deposits(key, energy, kind, NUM_KINDS)
    keep = total >= THRESHOLD
    uniq, total, kinds = uniq[keep], total[keep], kinds[keep]
    coords = np.stack([uniq // (self.size * self.size), uniq // self.size % self.size, uniq % self.size], axis=1)
    return coords.astype(np.int32), total.astype(np.float32), kinds.astype(np.int32)


# Particle species at a vertex: (name, probability, kinetic energy range in MeV).
_VERTEX_SPECIES = (("muon", 0.22, (30, 800)), ("pion", 0.1, (30, 500)), ("proton", 0.33, (20, 250)),
                   ("electron", 0.15, (20, 800)), ("photon", 0.2, (20, 800)))


def _emit(ev: _Event, species, start, direction, kinetic):
  if species in ("muon", "pion"):
    end, end_dir, stopped = ev.track(start, direction, kinetic, M_MU if species == "muon" else M_PI, MIP)
    if species == "muon" and stopped and ev.rng.random() < 0.75:
      ev.michel(end)
  elif species == "proton":
    ev.track(start, direction, kinetic, M_P, HIP)
  elif species == "electron":
    ev.electrons.append((start, direction, kinetic, SHOWER, LESCATTER))
  else:
    ev.photons.append((start, direction, kinetic, LESCATTER))


def _entry_point(rng, size):
  """A point on the surface of the cube and an inward direction."""
  face = rng.integers(6)
  p = rng.uniform(0, size, 3)
  axis, high = face // 2, face % 2
  p[axis] = size - 1e-3 if high else 0.0
  d = _isotropic(rng)
  d[axis] = -abs(d[axis]) if high else abs(d[axis])
  return p, d


def synthetic_lartpc_event(seed, *, size: int = 192, scheme: str = "uresnet5", noise_voxels: int = 0) -> dict:
  """One synthetic LArTPC event in a cube of ``size``^3 voxels (3 mm pitch).

  Args:
    seed: an int or a sequence of ints (numpy seeding); the same seed gives the same event.
    size: cube edge in voxels (192, 512 and 768 are the study's sizes; any size >= 32 works).
    scheme: ``"uresnet5"`` or ``"larcv5"`` labels (docs/conventions.md).
    noise_voxels: optional Gaussian noise: this many extra voxels at random positions with energy
      ``|N(0, 0.3 MeV)|``, labelled as low-energy scatter (larcv5) / EM shower (uresnet5).
  Returns:
    dict with ``coords`` int32[N, 3] (x, y, z voxel indices, unique, C-ordered), ``energy`` float32[N] (MeV)
    and ``labels`` int32[N].
  """
  _schemes.class_names(scheme)
  if int(size) < 32:
    raise ValueError(f"size must be at least 32 voxels, got {size}.")
  if int(noise_voxels) < 0:
    raise ValueError(f"noise_voxels must be >= 0, got {noise_voxels}.")
  size = int(size)
  rng = np.random.default_rng(seed)
  ev = _Event(rng, size)
  scale = size / 192
  names = [s[0] for s in _VERTEX_SPECIES]
  probs = np.array([s[1] for s in _VERTEX_SPECIES])
  ranges = {s[0]: s[2] for s in _VERTEX_SPECIES}
  for _ in range(1 + rng.poisson(2.0 * scale)):
    vertex = rng.uniform(0.15 * size, 0.85 * size, 3)
    for species in rng.choice(names, size=rng.integers(2, 11), p=probs / probs.sum()):
      _emit(ev, species, vertex, _isotropic(rng), rng.uniform(*ranges[species]))
    if rng.random() < 0.5:  # a low-energy muon that stops nearby (the source of most Michel electrons)
      _emit(ev, "muon", vertex, _isotropic(rng), rng.uniform(30, 120))
  for _ in range(rng.poisson(4.5 * scale)):  # cosmic-like muons crossing the volume
    start, direction = _entry_point(rng, size)
    _emit(ev, "muon", start, direction, float(np.exp(rng.uniform(np.log(200), np.log(5000)))))
  for _ in range(rng.poisson(1.0 * scale)):
    start, direction = _entry_point(rng, size)
    _emit(ev, "proton", start, direction, rng.uniform(20, 200))
  ev.run_cascades()
  if noise_voxels:
    ev.deposit(rng.uniform(0, size, (int(noise_voxels), 3)), np.abs(rng.normal(0, 0.3, int(noise_voxels))) + THRESHOLD,
               LESCATTER)
  coords, energy, kinds = ev.voxels()
  return {"coords": coords, "energy": energy, "labels": _schemes.kinds_to_labels(kinds, scheme)}


class SyntheticLArTPC:
  """A dataset of ``num_events`` synthetic events: ``ds[i]`` is ``synthetic_lartpc_event((seed, i), ...)``.

  Events are generated on access (about 100 per second per core at 192^3), so a dataset costs no memory and
  different seeds give disjoint, reproducible sets (e.g. seed 0 to train, seed 1 to evaluate).
  """

  def __init__(self, num_events: int, *, size: int = 192, scheme: str = "uresnet5", seed: int = 0,
               noise_voxels: int = 0):
    if num_events < 1:
      raise ValueError(f"num_events must be positive, got {num_events}.")
    _schemes.class_names(scheme)
    self.num_events, self.size, self.scheme, self.seed, self.noise_voxels = num_events, size, scheme, seed, noise_voxels

  def __len__(self) -> int:
    return self.num_events

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.num_events:
      raise IndexError(f"event {i} out of range for a dataset of {self.num_events} events.")
    return synthetic_lartpc_event((self.seed, int(i)), size=self.size, scheme=self.scheme,
                                  noise_voxels=self.noise_voxels)
