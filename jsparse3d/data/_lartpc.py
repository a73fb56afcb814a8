"""A seeded generator of realistic LArTPC events: tracks, showers, delta rays and Michel electrons in a voxel cube.

Particles are stepped so that each step advances exactly one voxel along its dominant axis: every track is a
26-connected line one voxel wide, and a MIP leaves 0.63 MeV in a voxel it crosses along an axis and up to 1.09 MeV
on a diagonal. Each step deposits its energy in the voxel of its midpoint; the deposits are summed per voxel, and
each voxel takes the kind that deposited most of its energy.

Physics (3 mm voxels, MeV, cm):
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
  """CSDA range of muon-like (mass < 500 MeV) or proton-like particles of kinetic energy t (arrays)."""
  u = t * M_MU / mass  # a muon-like range scales as M f(T / M)
  return np.where(mass > 500, _BK_ALPHA * t ** 1.75, (u * u / (MIP_DEDX * (u + 40.0))) * mass / M_MU)


def _kinetic_at(residual_cm, mass):
  """Kinetic energy with ``residual_cm`` of range left (inverse of :func:`_range_cm`)."""
  residual_cm = np.maximum(residual_cm, 1e-4)
  r = residual_cm * M_MU / mass
  # u^2 = 2.1 r (u + 40): the positive root.
  u = 0.5 * (MIP_DEDX * r + np.sqrt((MIP_DEDX * r) ** 2 + 4 * MIP_DEDX * r * 40.0))
  return np.where(mass > 500, (residual_cm / _BK_ALPHA) ** (1 / 1.75), u * mass / M_MU)


def _dedx(t, mass):
  """True dE/dx (MeV/cm) at kinetic energy t: Bragg-Kleeman for proton-like, muon-like otherwise."""
  u = t * M_MU / mass
  return np.where(mass > 500, t ** -0.75 / (1.75 * _BK_ALPHA), MIP_DEDX * (u + 40.0) ** 2 / (u * u + 80.0 * u))


def _beta_p(t, mass):
  """beta * p (MeV) of a particle of kinetic energy t."""
  return t * (t + 2 * mass) / (t + mass)


def _unit(v):
  """Rows of ``v`` scaled to unit length."""
  return v / np.sqrt(np.sum(v * v, axis=-1, keepdims=True))


def _segment_cumsum(x, counts):
  """Cumulative sums of ``x`` (rows) restarting at each of the consecutive segments of ``counts`` rows."""
  total = np.cumsum(x, axis=0)
  first = np.cumsum(counts) - counts
  return total - np.repeat(total[first] - x[first], counts, axis=0)


def _isotropic(rng):
  """A random unit vector (``[3]``)."""
  return _unit(rng.normal(size=3))


def _deflect(rng, directions, cos_theta):
  """Unit ``directions`` (``[n, 3]``) turned by the polar angles ``arccos(cos_theta)`` (``[n]``) about random
  azimuths."""
  r = rng.normal(size=directions.shape)
  i, j = [1, 2, 0], [2, 0, 1]
  other = directions[:, i] * r[:, j] - directions[:, j] * r[:, i]  # the cross product: perpendicular
  norm = np.sqrt(np.sum(other * other, axis=1, keepdims=True))
  cos_theta = cos_theta[:, None]
  sin_theta = np.sqrt(np.maximum(0.0, 1.0 - cos_theta * cos_theta))
  return _unit(cos_theta * directions + sin_theta * other / np.where(norm > 0, norm, 1.0))


def _steps_inside(size, starts, directions, n):
  """At most ``n`` steps for each row, cut where a straight path from its start has left the cube of ``size``
  voxels for good (tracks scatter little before that)."""
  with np.errstate(divide="ignore", invalid="ignore"):
    t_exit = np.where(directions > 0, (size - starts) / directions,
                      np.where(directions < 0, -starts / directions, np.inf))
  return np.maximum(1, np.minimum(n, np.ceil(np.min(t_exit, axis=-1)) + 8)).astype(np.int64)


def _columns(particles, width):
  """Queued particles (tuples of start, direction, energy, kinds) as columns of arrays, one row each."""
  if not particles:
    return (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), *(np.zeros(0, np.int8),) * (width - 3))
  cols = list(zip(*particles))
  return (np.array(cols[0], float).reshape(-1, 3), np.array(cols[1], float).reshape(-1, 3), np.array(cols[2], float),
          *(np.array(c, np.int8) for c in cols[3:]))


def _segments(counts):
  """For consecutive segments of ``counts`` rows: each row's segment, each segment's first row, each row's
  index within its segment."""
  row = np.repeat(np.arange(len(counts)), counts)
  first = np.cumsum(counts) - counts
  return row, first, np.arange(len(row)) - first[row]


def _concat(*batches):
  """Particle columns of several batches, concatenated row-wise."""
  return tuple(np.concatenate(parts) for parts in zip(*batches))


class _Event:
  """Energy samples (position in voxels, MeV, kind) and the particles still to be stepped.

  ``heavy`` holds ``(start, direction, kinetic energy, species)`` of muons, pions and protons; ``electrons`` holds
  ``(start, direction, energy, kind, photon Compton kind)``; ``photons`` holds ``(start, direction, energy, Compton
  kind)``. :meth:`run_tracks` steps all heavy particles together, then :meth:`run_cascades` steps the
  electromagnetic ones a generation at a time, each generation in the same numpy calls (per-particle numpy calls on
  3-vectors cost more than the arithmetic).
  """

  def __init__(self, rng, size):
    self.rng, self.size = rng, size
    self.pos, self.energy, self.kind = [], [], []
    self.heavy = []
    self.electrons = []
    self.photons = []

  def deposit(self, pos, energy, kind):
    """Energy samples at ``pos`` (``[n, 3]``, voxels) of one kind or of one kind each."""
    self.pos.append(pos)
    self.energy.append(energy)
    self.kind.append(np.broadcast_to(np.asarray(kind, np.int8), np.shape(energy)))

  def inside(self, p, margin=0.0):
    """Whether the rows of ``p`` lie within ``margin`` voxels of the cube (a bool, or bools for ``[n, 3]``)."""
    p = np.asarray(p)
    return np.all((p >= -margin) & (p < self.size + margin), axis=-1)

  def walk(self, starts, directions, theta, counts=None):
    """Paths of ``counts[i]`` steps from each start (one path of ``len(theta)`` steps without ``counts``) whose
    direction performs a Gaussian random walk (per-step rms angle ``theta``, radians, one per step of all the
    paths in order). Each step advances one voxel along its dominant axis.

    Returns:
      ``(midpoints [n, 3] in voxels, directions [n, 3], lengths [n] in cm)`` for all ``n = sum(counts)`` steps.
    """
    starts, directions = np.atleast_2d(starts), np.atleast_2d(directions)
    counts = np.array([len(theta)]) if counts is None else counts
    kicks = self.rng.normal(size=(len(theta), 3)) * theta[:, None]
    dirs = _unit(np.repeat(directions, counts, axis=0) + _segment_cumsum(kicks, counts))
    lengths = 1.0 / np.abs(dirs).max(axis=1)
    moves = dirs * lengths[:, None]
    pos = np.repeat(starts, counts, axis=0) + _segment_cumsum(moves, counts) - 0.5 * moves
    return pos, dirs, lengths * PITCH_CM

  # -- heavy particles --------------------------------------------------------------------------------------

  def tracks(self, start, direction, kinetic, mass, kind, deltas=True):
    """Muons, pions and protons (rows: ``start [m, 3]``, ``direction [m, 3]``, ``kinetic``, ``mass``, ``kind``).

    Returns:
      ``(end positions [m, 3], whether each stopped inside the volume [m])``.
    """
    total = _range_cm(kinetic, mass)
    counts = _steps_inside(self.size, start, direction, np.ceil(total / PITCH_CM).astype(np.int64) + 1)
    row, first, step = _segments(counts)
    # The scattering angle from the nominal momentum at each step, then the exact residual range of each step.
    t_nominal = _kinetic_at(total[row] - (step + 0.5) * STEP_CM, mass[row])
    pos, dirs, length = self.walk(start, direction, _HIGHLAND / _beta_p(t_nominal, mass[row]), counts)
    travelled = _segment_cumsum(length, counts)
    # The step in which each range ends (``counts`` where it does not end inside the steps taken).
    ends = np.minimum.reduceat(np.where(travelled >= total[row], step, counts[row]), first)
    stopped = ends < counts
    last_step = np.minimum(ends, counts - 1)
    last = first + last_step
    length[last[stopped]] -= travelled[last[stopped]] - total[stopped]
    travelled[last[stopped]] = total[stopped]
    taken = step <= last_step[row]
    pos, dirs, length, travelled, row = pos[taken], dirs[taken], length[taken], travelled[taken], row[taken]
    t = _kinetic_at(total[row] - travelled + 0.5 * length, mass[row])
    self.deposit(pos, _visible(_dedx(t, mass[row])) * length, kind[row])
    if deltas:
      self._deltas(pos, dirs, length, t, mass[row])
    end = pos[np.cumsum(np.bincount(row, minlength=len(counts))) - 1]
    return end, stopped & self.inside(end)

  def _deltas(self, pos, dirs, length, t, mass):
    """Knock-on electrons along a track: rate K/2 Z/A rho (1/T_min - 1/T_max) per cm."""
    gamma = 1 + t / mass
    beta2 = 1 - 1 / gamma ** 2
    t_max = np.minimum(2 * M_E * beta2 * gamma ** 2 / (1 + 2 * gamma * M_E / mass + (M_E / mass) ** 2), 200.0)
    rate = 0.0964 / beta2 * np.clip(1 / DELTA_MIN - 1 / t_max, 0, None) * length
    hits = np.flatnonzero(self.rng.random(len(rate)) < rate)
    hits = hits[self.inside(pos[hits])]
    if not hits.size:
      return
    t_max = t_max[hits]
    energy = 1 / (1 / DELTA_MIN - self.rng.random(hits.size) * (1 / DELTA_MIN - 1 / t_max))
    cos_theta = np.minimum(1.0, np.sqrt(energy * (1 + 2 * M_E / (t_max + 1e-9)) / (energy + 2 * M_E)))
    for p, d, e in zip(pos[hits], _deflect(self.rng, dirs[hits], cos_theta), energy):
      self.electrons.append((p, d, e, DELTA, LESCATTER))

  def michel(self, position):
    """Queues a Michel electron decaying at ``position``: energy from x^2 (3 - 2x) up to 52.8 MeV."""
    while True:
      x = self.rng.random()
      if self.rng.random() < x * x * (3 - 2 * x):
        break
    self.electrons.append((position, _isotropic(self.rng), x * MICHEL_MAX, MICHEL, SHOWER))

  def run_tracks(self):
    """Steps the queued heavy particles (rows of ``heavy``: start, direction, kinetic energy, species); a muon
    that stops inside decays to a Michel electron with probability 0.75."""
    if not self.heavy:
      return
    start, direction, kinetic, species = zip(*self.heavy)
    self.heavy = []
    species = np.array(species)
    mass = np.select([species == "muon", species == "pion"], [M_MU, M_PI], M_P)
    kind = np.where(species == "proton", HIP, MIP).astype(np.int8)
    end, stopped = self.tracks(np.array(start, float), np.array(direction, float), np.array(kinetic, float), mass,
                               kind)
    for i in np.flatnonzero(stopped & (species == "muon")):
      if self.rng.random() < 0.75:
        self.michel(end[i])

  # -- electromagnetic ------------------------------------------------------------------------------------

  def run_cascades(self):
    """Steps the queued electrons and photons and everything they produce, one generation at a time."""
    electrons, photons = _columns(self.electrons, 5), _columns(self.photons, 4)
    self.electrons, self.photons = [], []
    while len(electrons[2]) or len(photons[2]):
      photons = _concat(photons, self._electrons(*electrons))
      electrons = self._photons(*photons)
      photons = _columns([], 4)

  def _electrons(self, start, direction, energy, kind, compton_kind):
    """Steps electrons (rows); returns the photons they radiate as columns ``(start, direction, energy, kind)``."""
    near = self.inside(start, margin=20)
    start, direction, energy, kind, compton_kind = (a[near] for a in (start, direction, energy, kind, compton_kind))
    soft = energy < 3.0  # short and wiggly: ionisation only; below ~1 MeV, a single voxel
    n = np.maximum(1, np.rint(energy[soft] / MIP_DEDX / STEP_CM)).astype(np.int64)
    single = n == 1
    self.deposit(start[soft][single], energy[soft][single], kind[soft][single])
    walkers = np.flatnonzero(soft)[~single]
    if walkers.size:
      counts = n[~single]
      pos, _, _ = self.walk(start[walkers], direction[walkers], np.full(counts.sum(), 0.35), counts)
      self.deposit(pos, np.repeat(energy[walkers] / counts, counts), np.repeat(kind[walkers], counts))
    hard = ~soft
    start, direction, energy, kind, compton_kind = (a[hard] for a in (start, direction, energy, kind, compton_kind))
    if not len(energy):
      return _columns([], 4)
    counts = _steps_inside(self.size, start, direction, np.ceil(energy / MIP_DEDX / PITCH_CM).astype(np.int64) + 1)
    row, first, step = _segments(counts)
    # Bremsstrahlung: photons take a fraction y ~ 1/y of the current energy, E/X0 lost per unit length.
    y_min = np.minimum(0.5, 0.5 / energy)
    mean_y = (1 - y_min) / np.log(1 / y_min)
    emit = self.rng.random(len(row)) < STEP_CM / X0_CM / mean_y[row]
    y = np.where(emit, y_min[row] ** (1 - self.rng.random(len(row))), 0.0)
    kept = energy[row] * np.exp(_segment_cumsum(np.log1p(-y), counts))  # before ionisation losses
    nominal = np.maximum(kept - MIP_DEDX * STEP_CM * step, 0.5)
    pos, dirs, length = self.walk(start, direction, np.minimum(_HIGHLAND / nominal, 0.5), counts)
    left = kept - MIP_DEDX * _segment_cumsum(length, counts)
    # Each electron stops one step after its last step with energy left: that step spends what is left.
    last_alive = np.maximum.reduceat(np.where(left > 0, step, -1), first)
    n = np.minimum(np.where(last_alive >= 0, last_alive + 2, 1), counts)
    stepped = step < n[row]
    before = np.where(step == 0, energy[row], np.roll(left, 1))  # the energy at the start of each step
    ionisation = MIP_DEDX * length
    end = first + n - 1
    ionisation[end] = np.maximum(0.0, np.minimum(ionisation[end], before[end]))
    self.deposit(pos[stepped], ionisation[stepped], kind[row][stepped])
    e_gamma = np.maximum(before, 0.0) * y
    radiated = stepped & emit & (e_gamma > 0.2)
    return pos[radiated], dirs[radiated], e_gamma[radiated], compton_kind[row][radiated]

  def _photons(self, start, direction, energy, compton_kind):
    """Photons (rows) convert or Compton scatter until absorbed; returns the electrons they make, as columns."""
    made = []
    pos = start
    while True:
      # A photon at or below 0.2 MeV is absorbed where it is: its energy becomes an electron if above 0.05 MeV.
      absorbed = energy <= 0.2
      made.append((pos[absorbed], direction[absorbed], energy[absorbed], compton_kind[absorbed],
                   compton_kind[absorbed]))
      pos, direction, energy, compton_kind = (a[~absorbed] for a in (pos, direction, energy, compton_kind))
      if not len(energy):
        break
      pair = energy > PAIR_THRESHOLD
      pos = pos + direction * self.rng.exponential(np.where(pair, 9 / 7 * X0_CM, 12.0))[:, None] / PITCH_CM
      inside = self.inside(pos)
      pos, direction, energy, compton_kind, pair = (a[inside] for a in (pos, direction, energy, compton_kind, pair))
      # A photon above the threshold converts into an electron-positron pair (both shower); one below Compton
      # scatters: the recoil electron takes part of its energy, and it turns and goes on. All turns in one call.
      share = self.rng.uniform(0.05, 0.95, pair.sum())
      pair_energy = np.concatenate([share, 1 - share]) * np.tile(energy[pair], 2)
      scattered = ~pair
      recoil = energy[scattered] * self.rng.uniform(0.15, 0.75, scattered.sum())
      m = len(recoil)
      turned = _deflect(self.rng, np.concatenate([np.tile(direction[pair], (2, 1)), direction[scattered],
                                                   direction[scattered]]),
                        np.concatenate([np.cos(np.minimum(1.0, M_E / pair_energy) * self.rng.random(len(pair_energy))),
                                        self.rng.uniform(0.3, 1.0, m), self.rng.uniform(-0.5, 1.0, m)]))
      made.append((np.tile(pos[pair], (2, 1)), turned[:len(pair_energy)], pair_energy,
                   np.full(len(pair_energy), SHOWER, np.int8), np.tile(compton_kind[pair], 2)))
      pos, energy, compton_kind = pos[scattered], energy[scattered] - recoil, compton_kind[scattered]
      made.append((pos, turned[len(pair_energy):len(pair_energy) + m], recoil, compton_kind, compton_kind))
      direction = turned[len(pair_energy) + m:]
    electrons = _concat(*made)
    return tuple(a[electrons[2] > 0.05] for a in electrons)


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
  if species in ("muon", "pion", "proton"):
    ev.heavy.append((start, direction, kinetic, species))
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
  ev.run_tracks()
  ev.run_cascades()
  if noise_voxels:
    ev.deposit(rng.uniform(0, size, (int(noise_voxels), 3)), np.abs(rng.normal(0, 0.3, int(noise_voxels))) + THRESHOLD,
               LESCATTER)
  coords, energy, kinds = ev.voxels()
  return {"coords": coords, "energy": energy, "labels": _schemes.kinds_to_labels(kinds, scheme)}


class SyntheticLArTPC:
  """A dataset of ``num_events`` synthetic events: ``ds[i]`` is ``synthetic_lartpc_event((seed, i), ...)``.

  Events are generated on access (about 170 per second per core at 192^3), so a dataset costs no memory and
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
