"""Instance (cluster) segmentation by per-hit embeddings: the discriminative loss that trains them, and a
deterministic clustering that turns them into cluster ids at inference; both jit-compatible.

The loss is the discriminative loss of De Brabandere, Neven and Van Gool (2017), as the MIT calo-cluster code
trains its SPVCNN embeddings: within a true cluster, embeddings are pulled to within ``delta_v`` of the cluster's
mean; the means of two clusters of an event are pushed at least ``2 delta_d`` apart; a small term keeps the means
near the origin. Hits without a cluster (id -1: noise, padding) take no part.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_instances(instances, max_instances: int, *, what: str = "instance ids") -> None:
  """Raises a ``ValueError`` if a host array of instance ids holds an id >= ``max_instances`` (the loss keeps a
  slot per id: a larger id would be dropped silently). Call it before the step, as the trainer does."""
  import numpy as np
  instances = np.asarray(instances)
  if instances.size and instances.max() >= max_instances:
    raise ValueError(f"{what} reach {int(instances.max())}, beyond max_instances={max_instances} slots per event; "
                     f"raise max_instances (the model config's) to at least {int(instances.max()) + 1}.")


def _safe_norm(v):
  """The Euclidean norm over the last axis, with a finite gradient at zero (a one-hit cluster sits on its mean)."""
  return jnp.sqrt(jnp.sum(v * v, axis=-1) + 1e-12)


def discriminative_loss(embeddings, instances, events, num_events: int, max_instances: int, *,
                        delta_v: float = 0.5, delta_d: float = 1.5, reg_weight: float = 1e-3):
  """``(sum over events of the per-event loss, number of events with a cluster)``, float32 scalars.

  Args:
    embeddings: float [N, D]. instances: int [N], the cluster id of each hit within its event, -1 for none.
    events: int [N], each hit's event in ``[0, num_events)`` (-1: padding). num_events, max_instances: static;
      ids must be below ``max_instances`` (see :func:`check_instances`).
    delta_v, delta_d: the pull and push margins. reg_weight: the weight of the means' norm.

  Example:
    >>> e = jnp.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.0, 0.1]])
    >>> total, n = discriminative_loss(e, jnp.array([0, 0, 1, 1]), jnp.array([0, 0, 0, 0]), 1, 4)
    >>> round(float(total), 4), float(n)   # tight, well separated clusters: only the small norm term is left
    (0.0025, 1.0)
  """
  n, d = embeddings.shape
  slots = num_events * max_instances
  e = embeddings.astype(jnp.float32)
  valid = (instances >= 0) & (instances < max_instances) & (events >= 0) & (events < num_events)
  key = jnp.where(valid, events * max_instances + instances, slots)
  count = jax.ops.segment_sum(valid.astype(jnp.float32), key, num_segments=slots + 1)[:slots]
  mean = jax.ops.segment_sum(jnp.where(valid[:, None], e, 0.0), key, num_segments=slots + 1)[:slots]
  mean = mean / jnp.maximum(count, 1.0)[:, None]
  present = (count > 0).reshape(num_events, max_instances)
  clusters = present.sum(axis=1).astype(jnp.float32)
  # Pull: per cluster, the mean squared hinge of its hits' distances to its mean.
  to_mean = _safe_norm(e - mean[jnp.minimum(key, slots - 1)])
  pull = jnp.where(valid, jnp.maximum(to_mean - delta_v, 0.0) ** 2, 0.0)
  pull = jax.ops.segment_sum(pull, key, num_segments=slots + 1)[:slots] / jnp.maximum(count, 1.0)
  pull = pull.reshape(num_events, max_instances).sum(axis=1) / jnp.maximum(clusters, 1.0)
  # Push: per event, over ordered pairs of distinct present clusters.
  means = mean.reshape(num_events, max_instances, d)
  diff = means[:, :, None, :] - means[:, None, :, :]
  dist = _safe_norm(diff)
  pair = present[:, :, None] & present[:, None, :] & ~jnp.eye(max_instances, dtype=bool)[None]
  hinge = jnp.where(pair, jnp.maximum(2 * delta_d - dist, 0.0) ** 2, 0.0)
  push = hinge.sum(axis=(1, 2)) / jnp.maximum(pair.sum(axis=(1, 2)).astype(jnp.float32), 1.0)
  reg = jnp.where(present, _safe_norm(means), 0.0).sum(axis=1) / jnp.maximum(clusters, 1.0)
  has = clusters > 0
  per_event = jnp.where(has, pull + push + reg_weight * reg, 0.0)
  return jnp.sum(per_event), jnp.sum(has).astype(jnp.float32)


def cluster_embeddings(embeddings, candidates, seed_score, *, bandwidth: float, max_clusters: int,
                       refinements: int = 2):
  """Cluster ids of one event's hits from their embeddings, deterministically (jit-compatible).

  Repeatedly: the unassigned candidate with the highest ``seed_score`` (e.g. energy: showers grow from their
  densest cells) seeds a cluster; its centre moves ``refinements`` times to the mean of the unassigned candidates
  within ``bandwidth`` of it (a few mean-shift steps), and those hits form the cluster. After ``max_clusters``
  clusters, any candidate still unassigned joins the nearest centre, so no hit is left out. Ties in the score go
  to the lower index.

  Args:
    embeddings: float [N, D]. candidates: bool [N], the hits to cluster (e.g. predicted signal; False on padding).
    seed_score: float [N]. bandwidth: the radius of a cluster in embedding space (the loss's ``delta_d`` or a bit
      less). max_clusters: static.
  Returns:
    int32 [N]: the cluster id (0, 1, ... in order of creation) of each candidate, -1 elsewhere.

  Example:
    >>> e = jnp.array([[0.0, 0.0], [0.2, 0.0], [5.0, 0.0], [9.0, 9.0]])
    >>> ids = cluster_embeddings(e, jnp.array([True, True, True, False]), jnp.array([1.0, 3.0, 2.0, 9.0]),
    ...                          bandwidth=1.0, max_clusters=4)
    >>> ids.tolist()
    [0, 0, 1, -1]
  """
  e = embeddings.astype(jnp.float32)
  n = e.shape[0]
  score = jnp.where(candidates, seed_score.astype(jnp.float32), -jnp.inf)

  def grow(k, carry):
    ids, centres = carry
    free = candidates & (ids < 0)
    seed = jnp.argmax(jnp.where(free, score, -jnp.inf))
    centre = e[seed]
    for _ in range(refinements):
      near = free & (jnp.linalg.norm(e - centre[None], axis=1) < bandwidth)
      centre = jnp.where(near.any(), jnp.sum(jnp.where(near[:, None], e, 0.0), axis=0)
                         / jnp.maximum(near.sum(), 1).astype(jnp.float32), centre)
    members = free & (jnp.linalg.norm(e - centre[None], axis=1) < bandwidth)
    members = members | (free & (jnp.arange(n) == seed))  # the seed always joins its own cluster
    ids = jnp.where(members & free.any(), k, ids)
    centres = centres.at[k].set(jnp.where(free.any(), centre, jnp.inf))
    return ids, centres

  ids, centres = jax.lax.fori_loop(0, max_clusters, grow,
                                   (jnp.full(n, -1, jnp.int32), jnp.full((max_clusters, e.shape[1]), jnp.inf)))
  nearest = jnp.argmin(jnp.linalg.norm(e[:, None, :] - jnp.where(jnp.isfinite(centres), centres, 1e30)[None],
                                       axis=-1), axis=1).astype(jnp.int32)
  return jnp.where(candidates & (ids < 0), nearest, ids)
