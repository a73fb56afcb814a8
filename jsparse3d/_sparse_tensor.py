"""SparseTensor: coordinates, features and the geometry cache, as one pytree."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jsparse3d import _coords
from jsparse3d import _errors

# float64 only exists with jax x64 enabled (useful for finite-difference checks).
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16), np.dtype(np.float64))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Geometry:
  """The coordinates of a tensor without its features: what a coarser tensor remembers of its parent.

  Attributes:
    coords: ``int32[capacity, 4]``.
    num_valid: ``int32[]``.
    errors: ``int32[]`` error flags of the parent.
    cache: kernel maps and indices of the parent (see :class:`SparseTensor`).
    stride: static stride of the parent.
    capacities: static capacity plan of the parent (see :class:`SparseTensor`).
  """

  coords: jax.Array
  num_valid: jax.Array
  errors: jax.Array
  cache: dict[str, Any]
  stride: _coords.Triple = dataclasses.field(metadata=dict(static=True))
  capacities: tuple = dataclasses.field(default=(), metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseTensor(_errors.Flagged):
  """A batch of sparse voxel features with static capacity.

  Rows ``[0, num_valid)`` are real voxels; the rest are padding with batch index ``-1`` and features exactly
  zero, and every op keeps them so. Coordinates are in units of the finest voxel grid and are multiples of
  ``stride``. See ``docs/conventions.md``.

  Attributes:
    coords: ``int32[capacity, 4]`` rows ``(batch, x, y, z)``.
    feats: ``[capacity, C]`` float32, bfloat16 or float16 features.
    num_valid: ``int32[]`` number of real rows.
    errors: ``int32[]`` data-dependent error flags (see :func:`jsparse3d.raise_if_error`).
    cache: geometry reused across layers, keyed by static strings: ``"index"`` (the coordinate hash index),
      kernel maps such as ``"subm/k3x3x3/d1x1x1"``, and, on a tensor made by a strided op, ``"parent"`` (the
      finer :class:`Geometry`) and ``"down/..."`` (the map from the parent). Ops add entries; users never need to.
    stride: static ``(sx, sy, sz)`` tensor stride.
    capacities: static ``((stride, capacity), ...)``: the capacity that a strided op on this tensor (or on a tensor
      derived from it) gives its output of that stride, instead of this tensor's capacity. Coarse levels of a
      U-Net then carry little padding. Made by :meth:`plan_capacities`; an output with more rows than planned
      sets the ``CAPACITY_OVERFLOW`` flag (no row is dropped silently).

  Example:
    >>> coords = np.array([[0, 1, 2, 3], [0, 1, 2, 4], [1, 5, 5, 5]], np.int32)   # (batch, x, y, z)
    >>> x = SparseTensor.from_coords(coords, np.ones((3, 16), np.float32), capacity=4096)
    >>> y = jsparse3d.ops.conv3d(x, jax.random.normal(key, (3, 3, 3, 16, 32)))
    >>> y.feats.shape, int(y.num_valid)
    ((4096, 32), 3)
  """

  coords: jax.Array
  feats: jax.Array
  num_valid: jax.Array
  errors: jax.Array
  cache: dict[str, Any]
  stride: _coords.Triple = dataclasses.field(metadata=dict(static=True))
  capacities: tuple = dataclasses.field(default=(), metadata=dict(static=True))

  @property
  def capacity(self) -> int:
    return self.coords.shape[-2]

  @property
  def num_channels(self) -> int:
    return self.feats.shape[-1]

  @property
  def valid_mask(self) -> jax.Array:
    """``bool[capacity]``: which rows are real."""
    return _coords.valid_rows(self.capacity, self.num_valid)

  @property
  def geometry(self) -> Geometry:
    return Geometry(self.coords, self.num_valid, self.errors, self.cache, self.stride, self.capacities)

  def replace(self, **changes) -> "SparseTensor":
    """A copy with fields replaced, e.g. ``x.replace(feats=new_feats)``; geometry and cache are kept.

    New features must have ``capacity`` rows, a float dtype, and zeros on padded rows (use
    :func:`jsparse3d.ops.apply` for elementwise functions that may not map 0 to 0).
    """
    if "feats" in changes:
      feats = changes["feats"]
      if feats.ndim != self.feats.ndim or feats.shape[:-1] != self.feats.shape[:-1]:
        raise ValueError(f"replacement feats must have shape {self.feats.shape[:-1]} + (C,), got {feats.shape}.")
      _check_float(feats.dtype, "feats")
    return dataclasses.replace(self, **changes)

  def without_cache(self) -> "SparseTensor":
    """A copy without cached indices, kernel maps and parent geometry (coordinates, features and flags stay).

    A jitted function returns every array of its outputs, and a tensor's cache holds all the maps built on the
    way; returning ``y.without_cache()`` keeps them inside. Later ops rebuild what they need, or take a map
    computed once outside (``conv3d(..., kmap=)``).
    """
    return dataclasses.replace(self, cache={})

  @classmethod
  def from_geometry(cls, geometry: Geometry, feats: jax.Array, errors: jax.Array | None = None) -> "SparseTensor":
    errs = geometry.errors if errors is None else geometry.errors | errors
    return cls(geometry.coords, feats, geometry.num_valid, errs, geometry.cache, geometry.stride, geometry.capacities)

  def planned_capacity(self, stride) -> int:
    """The capacity of this tensor's coarser level of tensor stride ``stride``: the planned one (see
    :meth:`plan_capacities`), else this tensor's own (always enough: a strided op never makes more rows)."""
    return dict(self.capacities).get(_coords.as_triple(stride, "stride"), self.capacity)

  def plan_capacities(self, strides, buckets=None, *, fractions=None) -> "SparseTensor":
    """A copy whose strided ops make outputs of just enough capacity (eager: reads the coordinates).

    For each tensor stride in ``strides`` it counts the distinct cells ``floor(c / s)`` of the valid rows (the
    Minkowski output rule) and keeps the smallest of ``buckets`` that holds them, so the coarse levels of a U-Net
    stop carrying the finest level's padding. Each level picks its bucket independently, so batches of one
    capacity can still have many plans, one compiled program each; ``fractions`` ties the plan to the capacity
    instead: level ``i`` gets ``fractions[i] * capacity`` rows (rounded up to a multiple of 128) whenever its cells
    fit there, and its own bucket only when they do not. Batches of one capacity then share one plan, except for
    the rare batch that needs more.

    Args:
      strides: tensor strides of the coarser levels, e.g. ``(2, 4, 8, 16)`` or 3-tuples.
      buckets: capacities to choose from (default :data:`jsparse3d.data.DEFAULT_BUCKETS`); never more than this
        tensor's capacity.
      fractions: optional, one per stride, each in (0, 1]: the share of this tensor's capacity that level reserves
        (for 192^3 LArTPC batches, whose coarse levels hold at most 69%, 41%, 23% and 12% of the rows,
        ``(0.7, 0.42, 0.24, 0.125)``).
    Returns:
      This tensor with :attr:`capacities` set.

    Example:
      >>> x = SparseTensor.from_coords(coords, feats, capacity=12288).plan_capacities((2, 4, 8, 16))
      >>> w = jax.random.normal(key, (2, 2, 2, 32, 64)) * 0.05
      >>> y = jsparse3d.ops.conv3d(x, w, stride=2)   # y.capacity is the planned one for stride 2
      >>> y.capacity == x.planned_capacity(2) < x.capacity
      True
    """
    from jsparse3d.data._batching import DEFAULT_BUCKETS  # data imports this module
    from jsparse3d.data._batching import bucket_capacity  # data imports this module
    strides = tuple(strides)
    if fractions is not None:
      fractions = tuple(fractions)
      if len(fractions) != len(strides) or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"plan_capacities: fractions {fractions} must give one share in (0, 1] per stride "
                         f"{strides}, e.g. (0.7, 0.42, 0.24, 0.125) for (2, 4, 8, 16).")
    n = int(self.num_valid)
    coords = np.asarray(self.coords)[:n].astype(np.int64)
    plan = []
    for i, stride in enumerate(strides):
      st = _coords.as_triple(stride, "stride")
      if any(a % b for a, b in zip(st, self.stride)) or st == self.stride:
        raise ValueError(f"plan_capacities: stride {st} must be a coarser multiple of the tensor stride "
                         f"{self.stride}.")
      cells = _count_distinct_rows(np.c_[coords[:, :1], np.floor_divide(coords[:, 1:], np.asarray(st))])
      reserved = -(-int(np.ceil(fractions[i] * self.capacity)) // 128) * 128 if fractions is not None else 0
      capacity = reserved if cells <= reserved else bucket_capacity(cells, buckets or DEFAULT_BUCKETS)
      plan.append((st, min(self.capacity, capacity)))
    return dataclasses.replace(self, capacities=tuple(plan))

  @classmethod
  def from_coords(cls, coords, feats, *, capacity: int | None = None, stride: int | tuple[int, int, int] = 1,
                  duplicates: Literal["sum", "mean", "error"] = "sum", check_finite: bool = True) -> "SparseTensor":
    """Builds a tensor from host arrays, merging duplicate coordinates.

    Rows are sorted by ``(batch, x, y, z)`` and padded to ``capacity``.

    Args:
      coords: integer ``[N, 4]`` rows ``(batch, x, y, z)``, or ``[N, 3]`` rows ``(x, y, z)`` for batch 0.
      feats: float ``[N, C]`` (float64 is stored as float32 unless jax x64 is enabled).
      capacity: static number of rows; default ``N`` after merging duplicates.
      stride: tensor stride; coordinates must be multiples of it.
      duplicates: how to merge rows with the same coordinates: ``"sum"``, ``"mean"``, or ``"error"`` to refuse.
      check_finite: refuse NaN or infinite features (set False to allow them).
    Returns:
      A :class:`SparseTensor` with ``capacity`` rows.

    Example:
      >>> points = np.random.default_rng(0).random((5000, 4), dtype=np.float32) * [10, 10, 2, 1]  # x, y, z, r
      >>> xyz = np.floor(points[:, :3] / 0.05).astype(np.int32)
      >>> x = SparseTensor.from_coords(xyz, points[:, 3:], capacity=8192, duplicates="mean")
    """
    coords = np.asarray(coords)
    feats = np.asarray(feats)
    stride = _coords.as_triple(stride, "stride")
    if any(s < 1 for s in stride):
      raise ValueError(f"stride must be positive, got {stride}.")
    if coords.ndim != 2 or coords.shape[1] not in (3, 4):
      raise ValueError(f"coords must have shape [N, 4] (batch, x, y, z) or [N, 3] (x, y, z), got {coords.shape}.")
    if not np.issubdtype(coords.dtype, np.integer) or coords.dtype == np.bool_:
      raise TypeError(
          f"coords must be integer voxel indices, got dtype {coords.dtype}. Voxelize points first, e.g. "
          "np.floor(xyz / voxel_size).astype(np.int32).")
    if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
      raise ValueError(
          f"feats must have shape [N, C] with N = {coords.shape[0]} (one row per coordinate), got {feats.shape}. "
          "For one channel use feats[:, None].")
    if feats.dtype == np.float64 and not jax.config.jax_enable_x64:
      feats = feats.astype(np.float32)
    _check_float(feats.dtype, "feats")
    if check_finite and feats.size and not np.isfinite(feats.astype(np.float32)).all():
      bad = int(np.argwhere(~np.isfinite(feats.astype(np.float32)))[0, 0])
      raise ValueError(f"feats contain NaN or inf (first in row {bad}). Clean the input, or pass check_finite=False.")
    if coords.shape[1] == 3:
      coords = np.concatenate([np.zeros((coords.shape[0], 1), coords.dtype), coords], axis=1)
    coords = coords.astype(np.int64)
    _check_range(coords)
    rem = coords[:, 1:] % np.asarray(stride)
    if rem.any():
      bad = int(np.argwhere(rem.any(axis=1))[0, 0])
      raise ValueError(
          f"coordinates must be multiples of the stride {stride}; row {bad} is {coords[bad].tolist()}. Coordinates "
          "are in finest-voxel units: multiply coarse indices by the stride.")

    coords, feats = _merge_duplicates(coords, feats, duplicates)
    n = coords.shape[0]
    if capacity is None:
      capacity = n
    if not isinstance(capacity, (int, np.integer)) or capacity < 0:
      raise TypeError(f"capacity must be a non-negative int, got {capacity!r}.")
    if capacity < n:
      raise ValueError(
          f"capacity {capacity} is smaller than the number of points ({n} after merging duplicates); no point is "
          f"ever dropped. Pass capacity >= {n}.")
    padded = np.zeros((capacity, 4), np.int32)
    padded[:, 0] = -1
    padded[:n] = coords
    pfeats = np.zeros((capacity, feats.shape[1]), feats.dtype)
    pfeats[:n] = feats
    return cls(jnp.asarray(padded), jnp.asarray(pfeats), jnp.asarray(n, jnp.int32), _errors.no_errors(), {},
               stride)

  def dense(self, spatial_shape=None, *, batch_size: int | None = None, origin=(0, 0, 0)) -> jax.Array:
    """A dense ``[batch_size, X, Y, Z, C]`` copy for debugging; see :func:`jsparse3d.ops.to_dense`.

    Defaults (eager only) cover every valid voxel: ``origin`` as given, the smallest box from it, and the
    largest batch index plus one.
    """
    from jsparse3d.ops import _dense  # ops import this module
    if spatial_shape is None or batch_size is None:
      n = int(self.num_valid)
      c = np.asarray(self.coords)[:n]
      if spatial_shape is None:
        hi = (c[:, 1:].max(axis=0) - np.asarray(origin)) // np.asarray(self.stride) + 1 if n else np.ones(3, int)
        spatial_shape = tuple(int(v) for v in hi)
      if batch_size is None:
        batch_size = int(c[:, 0].max()) + 1 if n else 1
    return _dense.to_dense(self, spatial_shape, batch_size=batch_size, origin=origin)


def _check_float(dtype, name: str) -> None:
  if np.dtype(dtype) not in _FLOAT_DTYPES:
    raise TypeError(
        f"{name} must be float32, bfloat16 or float16 (float64 with jax x64), got {dtype}. Cast with "
        ".astype(jnp.float32).")


def _check_range(coords: np.ndarray) -> None:
  b, xyz = coords[:, 0], coords[:, 1:]
  if b.size and (b.min() < 0 or b.max() > _coords.MAX_BATCH):
    raise ValueError(
        f"batch indices must be in 0..{_coords.MAX_BATCH}, got {b.min()}..{b.max()}. Number the events of a batch "
        "from 0.")
  if xyz.size and (xyz.min() < _coords.COORD_MIN or xyz.max() > _coords.COORD_MAX):
    raise ValueError(
        f"spatial coordinates must be in {_coords.COORD_MIN}..{_coords.COORD_MAX}, got {xyz.min()}..{xyz.max()}. "
        "Shift the coordinates (e.g. subtract their minimum) or use a coarser voxel size.")


def _merge_duplicates(coords: np.ndarray, feats: np.ndarray, duplicates: str):
  if duplicates not in ("sum", "mean", "error"):
    raise ValueError(f"duplicates must be 'sum', 'mean' or 'error', got {duplicates!r}.")
  if coords.shape[0] == 0:
    return coords.astype(np.int32), feats
  # 10 batch bits and 3 x 18 axis bits fill all 64 bits of the key: unsigned, or batches >= 512 sort first.
  span = np.uint64(1) << np.uint64(_coords.AXIS_BITS)
  u = (coords[:, 1:] - _coords.COORD_MIN).astype(np.uint64)
  keys = ((coords[:, 0].astype(np.uint64) * span + u[:, 0]) * span + u[:, 1]) * span + u[:, 2]
  order = np.argsort(keys, kind="stable")
  sorted_keys = keys[order]
  starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
  counts = np.diff(np.r_[starts, keys.size])
  if duplicates == "error" and (counts > 1).any():
    first = coords[order[starts[np.argmax(counts > 1)]]].tolist()
    raise ValueError(
        f"{int((counts > 1).sum())} coordinates appear more than once (e.g. {first}). Pass duplicates='sum' or "
        "'mean' to merge them.")
  merged = np.add.reduceat(feats[order].astype(np.float32), starts, axis=0)
  if duplicates == "mean":
    merged /= counts[:, None]
  return coords[order[starts]].astype(np.int32), merged.astype(feats.dtype)


def _count_distinct_rows(rows: np.ndarray) -> int:
  """Distinct rows of an int64 ``[N, 4]`` array: one 1-D unique of packed keys (``np.unique(axis=0)`` is ~10x
  slower), falling back to the row-wise unique when the spans do not pack into 63 bits."""
  if not len(rows):
    return 0
  lo = rows.min(axis=0)
  spans = rows.max(axis=0) - lo + 1
  if float(np.prod(spans.astype(np.float64))) >= 2.0 ** 62:
    return len(np.unique(rows, axis=0))
  key = np.zeros(len(rows), np.int64)
  for column, span, low in zip(rows.T, spans, lo):
    key = key * span + (column - low)
  return len(np.unique(key))
