"""LArTPC semantic class schemes (docs/conventions.md) and the explicit conversions between them.

The generator tracks six internal kinds, finer than either scheme, and maps them at the end:

  kind        uresnet5            larcv5
  HIP         0 HIP               1 track
  MIP         1 MIP               1 track
  SHOWER      2 EM shower         0 shower
  DELTA       3 delta ray         3 delta ray
  MICHEL      4 Michel            2 Michel
  LESCATTER   2 EM shower         4 low-energy scatter
"""

from __future__ import annotations

import numpy as np

HIP, MIP, SHOWER, DELTA, MICHEL, LESCATTER = range(6)
NUM_KINDS = 6

SCHEMES = {
    "uresnet5": ("HIP", "MIP", "EM shower", "delta ray", "Michel"),
    "larcv5": ("shower", "track", "Michel", "delta ray", "low-energy scatter"),
}

_KIND_TO = {
    "uresnet5": np.array([0, 1, 2, 3, 4, 2], np.int32),
    "larcv5": np.array([1, 1, 0, 3, 2, 4], np.int32),
}


def class_names(scheme: str) -> tuple[str, ...]:
  """The class names of a scheme, in label order."""
  _check_scheme(scheme)
  return SCHEMES[scheme]


def kinds_to_labels(kinds: np.ndarray, scheme: str) -> np.ndarray:
  """Internal generator kinds -> class labels of ``scheme``."""
  _check_scheme(scheme)
  return _KIND_TO[scheme][kinds]


def uresnet5_to_larcv5(labels: np.ndarray) -> np.ndarray:
  """uresnet5 labels -> larcv5 labels: HIP and MIP become track; EM shower stays shower.

  (The reverse is not defined: larcv5 does not tell protons from muons, and uresnet5 has no low-energy
  scatter class.)
  """
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() > 4):
    raise ValueError(f"uresnet5 labels lie in 0..4, got {labels.min()}..{labels.max()}.")
  return np.array([1, 1, 0, 3, 2], np.int32)[labels]


def _check_scheme(scheme):
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {scheme!r}.")
