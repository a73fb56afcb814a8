"""Pure-jnp reference of trilinear devoxelization (docs/conventions.md: voxel values sit at their lattice points, the 8
corners of a point are ``floor(p) + {0,1}^3``, missing corners weigh 0 and the rest are renormalised to sum 1)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pallas_kernels.hash import reference as hash_reference

CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], np.int32)  # [8, 3]


def corners_and_weights(slots, key_hi, key_lo, p, batch, stride=(1, 1, 1)):
  """``(rows int32[P, 8], weights float32[P, 8])`` of points ``p`` (float [P, 3] in lattice units: finest-voxel
  coordinates divided by the voxels' ``stride``)."""
  base = jnp.floor(p)
  frac = p - base
  corners = base.astype(jnp.int32)[:, None, :] + jnp.asarray(CORNERS)[None]
  b = jnp.broadcast_to(batch[:, None, None], corners.shape[:2] + (1,))
  coords = jnp.concatenate([b, corners * jnp.asarray(stride, jnp.int32)[None, None, :]], axis=2).reshape(-1, 4)
  rows = hash_reference.query(slots, key_hi, key_lo, coords).reshape(-1, 8)
  present = (rows >= 0) & (batch >= 0)[:, None]
  w = jnp.prod(jnp.where(jnp.asarray(CORNERS)[None] == 1, frac[:, None, :], 1.0 - frac[:, None, :]), axis=2)
  w = jnp.where(present, w, 0.0)
  w = w / jnp.maximum(w.sum(axis=1, keepdims=True), 1e-12)
  return jnp.where(present, rows, -1), w


def devoxelize(feats, rows, weights):
  """``out[p] = sum_j weights[p, j] * feats[rows[p, j]]`` (float32 accumulation, ``feats``' dtype)."""
  vals = jnp.where((rows >= 0)[..., None], feats[jnp.maximum(rows, 0)].astype(jnp.float32), 0.0)
  return jnp.einsum("pj,pjc->pc", weights, vals).astype(feats.dtype)
