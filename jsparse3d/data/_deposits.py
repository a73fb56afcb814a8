"""Energy deposits summed per cell, each cell labelled by its largest contributor (shared by the generators)."""

from __future__ import annotations

import numpy as np


def merge_deposits(key, energy, label, num_labels: int):
  """Sums the deposits of each cell and labels the cell with the class that deposited the most energy there.

  Args:
    key: int [D] cell key of each deposit. energy: float [D]. label: int [D] in ``[0, num_labels)``.
  Returns:
    ``(cells, total, labels, inverse)``: the unique keys (sorted), their summed energies and labels, and the
    cell row of each deposit.
  """
  cells, inverse = np.unique(key, return_inverse=True)
  total = np.bincount(inverse, weights=energy, minlength=len(cells))
  by_label = np.bincount(inverse * num_labels + label, weights=energy, minlength=len(cells) * num_labels)
  return cells, total, by_label.reshape(-1, num_labels).argmax(axis=1), inverse
