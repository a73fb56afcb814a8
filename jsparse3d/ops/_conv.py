"""Sparse 3D convolution: submanifold, strided and transposed, with cached kernel maps."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jsparse3d import _coords
from jsparse3d import _errors
from jsparse3d import _macs
from jsparse3d._sparse_tensor import SparseTensor
from jsparse3d.ops import _backend
from jsparse3d.ops import _conv_primitive
from jsparse3d.ops import _hash
from jsparse3d.ops import _kernel_map


def _key(kind: str, kernel_size, stride=None, dilation=(1, 1, 1), padding=None) -> str:
  """The cache key of a kernel map: ``down/k2x2x2/s2x2x2/d1x1x1``, with ``/p..`` for the padded rule."""
  fmt = lambda t: "x".join(map(str, t))
  parts = [kind, f"k{fmt(kernel_size)}"] + ([f"s{fmt(stride)}"] if stride is not None else []) + [f"d{fmt(dilation)}"]
  return "/".join(parts + ([f"p{fmt(padding)}"] if padding is not None else []))


def _with_cache(x: SparseTensor, **entries) -> SparseTensor:
  return x.replace(cache={**x.cache, **entries})


def ensure_index(x: SparseTensor, implementation: str | None = None):
  """The hash index of ``x``'s coordinates, from its cache or built now (and cached on the returned tensor).

  ``implementation`` (``"xla"`` or ``"pallas"``; None: any cached index, else the backend's default) asks for a
  particular kind of index; a cached index of the other kind is replaced.
  """
  cached = x.cache.get("index")
  if cached is not None and (implementation is None or _hash.implementation_of(cached) == implementation):
    return cached, x
  index = _hash.build_index(x.coords, x.num_valid, implementation=implementation)
  return index, _with_cache(x, index=index).replace(errors=x.errors | index.errors)


def kernel_map(x: SparseTensor, kernel_size, *, stride=1, dilation=1, padding=None, capacity: int | None = None,
               implementation: str | None = None) -> tuple[_kernel_map.KernelMap, SparseTensor]:
  """The kernel map of a convolution on ``x``, from the cache or built now.

  Args:
    x: input tensor.
    kernel_size: int or 3 ints. stride: int or 3 ints (1 = submanifold). dilation: int or 3 ints.
    padding: None (the Minkowski rule above), or int / 3 ints: the dense-convolution rule of spconv's
      ``SparseConv3d(k, s, p)``: the output sites are every multiple ``q`` of the output stride whose window
      ``q + (i * dilation - padding) * s_in`` holds an active input (at any stride, 1 included: a regular,
      non-submanifold conv). See docs/conventions.md.
    capacity: rows of a strided (or padded) map's output tensor; default ``x.planned_capacity(...)``
      (``x.capacity`` unless :meth:`SparseTensor.plan_capacities` planned less). More output sites than that set
      ``CAPACITY_OVERFLOW``; a padded conv can make more sites than its input has, so pass enough.
    implementation: how a map not yet cached is built: ``"native"`` (the CPU kernels, no hash index),
      ``"xla"`` (through the tensor's hash index, cached as ``"index"``) or None: native on the CPU backend where
      the kernels build, else the index (the Pallas one on a GPU). Every implementation gives the same map.
  Returns:
    ``(kmap, y)``: for stride 1, ``y`` is ``x`` with the map cached; for stride > 1, ``y`` is the coarse output
    geometry (a SparseTensor with zero-width features) that remembers ``x`` as its parent. ``kmap.src`` rows
    index ``x``, ``kmap.dst`` rows index ``y``; ``kmap.T`` is the map of the transposed conv from ``y`` to ``x``.

  Example:
    >>> kmap, x = kernel_map(x, 3)
    >>> table = kmap.neighbor_table()  # int32[N, 27]
  """
  ks = _coords.as_triple(kernel_size, "kernel_size")
  st = _coords.as_triple(stride, "stride")
  dil = _coords.as_triple(dilation, "dilation")
  _coords.check_conv_geometry(ks, st, dil)
  native = _native_maps(x, implementation)
  if padding is not None:
    return _padded_map(x, ks, st, dil, _padding(padding, ks, dil), capacity, native)
  if st == (1, 1, 1):
    key = _key("subm", ks, dilation=dil)
    if key in x.cache:
      return x.cache[key], x
    if native:
      kmap, errors = _kernel_map.submanifold_map_native(x.coords, x.num_valid, ks, dil, x.stride)
    else:
      index, x = ensure_index(x)
      kmap, errors = _kernel_map.submanifold_map(x.coords, x.num_valid, index, ks, dil, x.stride)
    errors = x.errors | errors
    _errors.check_now(errors, "kernel_map")
    kmap = _for_convs(kmap, x)
    return kmap, _with_cache(x, **{key: kmap}).replace(errors=errors)
  factor = tuple(a * b for a, b in zip(x.stride, st))
  if capacity is None:
    capacity = x.planned_capacity(factor)
  if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 0:
    raise TypeError(f"capacity must be a non-negative int (the output's static row count), got {capacity!r}.")
  capacity = int(capacity)
  if native:
    out_coords, out_nv, out_row, errors = _kernel_map.downsample_coords_native(x.coords, x.num_valid, factor,
                                                                               capacity)
    kmap, map_errors = _kernel_map.strided_map(x.coords, x.num_valid, None, out_coords, out_nv, out_row, ks, st,
                                               dil, x.stride)
    errors, cache = errors | map_errors, {}
  else:
    index, x = ensure_index(x)
    out_coords, out_nv, out_index, out_row = _kernel_map.downsample_coords(x.coords, x.num_valid, factor, capacity)
    kmap, map_errors = _kernel_map.strided_map(x.coords, x.num_valid, index, out_coords, out_nv, out_row, ks, st,
                                               dil, x.stride)
    errors, cache = out_index.errors | map_errors, {"index": out_index}
  errors = x.errors | errors
  _errors.check_now(errors, "strided conv")
  kmap = _for_convs(kmap, x)
  y = SparseTensor(out_coords, jnp.zeros((capacity, 0), x.feats.dtype), out_nv, errors,
                   {**cache, "parent": x.geometry, _key("down", ks, st, dil): kmap}, factor, x.capacities)
  return kmap, y


def _padding(padding, kernel_size, dilation):
  pad = _coords.as_triple(padding, "padding")
  if any(p < 0 or p > (k - 1) * d for p, k, d in zip(pad, kernel_size, dilation)):
    raise ValueError(f"padding {pad} must be in 0..(k - 1) * dilation per axis for kernel {kernel_size} and "
                     f"dilation {dilation} (larger padding reaches sites no input touches).")
  return pad


def _padded_map(x: SparseTensor, ks, st, dil, pad, capacity, native):
  """The map and output geometry of the dense-rule (padded) convolution."""
  factor = tuple(a * b for a, b in zip(x.stride, st))
  key = _key("pad", ks, st, dil, pad)
  if capacity is None:
    capacity = x.planned_capacity(factor) if st != (1, 1, 1) else x.capacity
  offsets = _coords.kernel_offsets(ks, dil, x.stride, pad)
  out_coords, out_nv, errors = _kernel_map.reached_coords(x.coords, x.num_valid, tuple(map(tuple, (-offsets).tolist())),
                                                          factor, int(capacity))
  index = None
  if not native:
    index, x = ensure_index(x)
  kmap, map_errors = _kernel_map.strided_map(x.coords, x.num_valid, index, out_coords, out_nv, None, ks, st, dil,
                                             x.stride, padding=pad)
  errors = x.errors | errors | map_errors
  _errors.check_now(errors, "padded conv")
  kmap = _for_convs(kmap, x)
  y = SparseTensor(out_coords, jnp.zeros((int(capacity), 0), x.feats.dtype), out_nv, errors,
                   {"parent": x.geometry, key: kmap}, factor, x.capacities if st != (1, 1, 1) else ())
  return kmap, y


def _for_convs(kmap: _kernel_map.KernelMap, x: SparseTensor) -> _kernel_map.KernelMap:
  """``kmap`` as it is cached for the convolutions on ``x``: with its neighbour tables where those run the Pallas
  kernels by default (built once here, not once per convolution)."""
  return kmap.with_tables() if _backend.resolve("conv", None, x.feats.dtype) == "pallas" else kmap


def _native_maps(x: SparseTensor, implementation: str | None = None) -> bool:
  """Whether ``x``'s kernel maps are built by the native CPU kernels (equal maps, far cheaper to compile and run):
  by default on the CPU backend where they build, unless ``x`` already carries a Pallas (GPU) index."""
  cached = x.cache.get("index")
  if implementation is None and cached is not None and _hash.implementation_of(cached) != "xla":
    return False
  return _backend.resolve("kernel_map", implementation) == "native"


def _check_weight(x: SparseTensor, weight, c_in_axis: int, what: str):
  if not isinstance(x, SparseTensor):
    raise TypeError(f"{what} expects a SparseTensor, got {type(x).__name__}.")
  if getattr(weight, "ndim", None) != 5:
    raise ValueError(
        f"weight must have shape [kx, ky, kz, C_in, C_out], got {getattr(weight, 'shape', type(weight))}.")
  if weight.shape[c_in_axis] != x.num_channels:
    raise ValueError(
        f"channel mismatch: the tensor has {x.num_channels} channels but the weight {weight.shape} expects "
        f"{weight.shape[c_in_axis]} (axis {c_in_axis}). Use a weight of shape [kx, ky, kz, {x.num_channels}, C_out].")
  if weight.dtype != x.feats.dtype:
    raise TypeError(
        f"weight dtype {weight.dtype} differs from feature dtype {x.feats.dtype}. Cast one of them, e.g. "
        "weight.astype(x.feats.dtype); accumulation is float32 either way.")
  if x.feats.ndim != 2:
    raise ValueError(
        f"{what} takes one SparseTensor with feats [N, C], got feats {x.feats.shape}. Use jax.vmap for a stack.")


def _apply(x_feats, weight, kmap, bias, y: SparseTensor, implementation: str) -> SparseTensor:
  """``implementation``: already resolved by :func:`_backend.resolve`."""
  w = weight.reshape(math.prod(weight.shape[:3]), weight.shape[3], weight.shape[4])
  if implementation == "pallas":
    kmap = kmap.with_tables()  # a no-op for a map built for Pallas convolutions (see _for_convs)
  _macs.record("sparse_conv", kmap.num_pairs * w.shape[1] * w.shape[2])
  with _macs.counted_by_op():
    out = _conv_primitive.conv(x_feats, w, kmap, implementation=implementation)
  if bias is not None:
    if getattr(bias, "shape", None) != (weight.shape[4],):
      raise ValueError(f"bias must have shape ({weight.shape[4]},), got {getattr(bias, 'shape', bias)}.")
    out = jnp.where(y.valid_mask[:, None], out + bias.astype(out.dtype)[None, :], jnp.zeros((), out.dtype))
  return y.replace(feats=out)


def conv3d(x: SparseTensor, weight: jax.Array, *, stride=1, dilation=1, padding=None, bias: jax.Array | None = None,
           capacity: int | None = None, kmap=None, implementation: str | None = None) -> SparseTensor:
  """Sparse 3D convolution (cross-correlation).

  ``out[q] = sum_i W[i]^T x[q + offset_i]`` over the offsets whose input site exists, with offsets as in
  docs/conventions.md. Stride 1 is submanifold: the output has the input's coordinates. Stride ``s > 1`` gives the
  coordinates ``unique(floor(c / (s_in * s)) * (s_in * s))``, stride ``s_in * s`` and ``capacity`` rows.
  Accumulation is float32 for every feature dtype.

  Args:
    x: input with ``C_in`` channels.
    weight: ``[kx, ky, kz, C_in, C_out]``, same dtype as ``x.feats``; kernel sizes 1..7.
    stride: 1..4 per axis. dilation: 1..3 per axis.
    padding: None (the Minkowski rule; stride 1 is submanifold), or the dense-convolution rule of spconv's
      ``SparseConv3d(k, s, p)`` (SECOND / CenterPoint backbones use k3 s2 p1): see :func:`kernel_map`.
    bias: optional ``[C_out]``, added on valid rows.
    capacity: output rows of a strided conv (see :func:`kernel_map`); default the planned or the input capacity.
    kmap: a precomputed map: what :func:`kernel_map` returned for ``x`` with this kernel size, stride and
      dilation (the ``(KernelMap, y)`` pair; a bare KernelMap for stride 1). It may come from outside a jitted
      function, so the function need not rebuild or return the maps (see :meth:`SparseTensor.without_cache`).
    implementation: ``"native"`` (CPU kernels called through XLA's FFI, float32 arithmetic, all intra-op
      threads), ``"xla"`` (pure XLA, any backend and float64), ``"pallas"`` (the fused gather-GEMM GPU kernels
      of :mod:`pallas_kernels.conv`; Pallas interpret mode on CPU, for tests), or None: Pallas on a GPU backend,
      else native on the CPU backend when its kernels build (float32, bfloat16, float16), else XLA. All are
      deterministic.
  Returns:
    SparseTensor with ``C_out`` channels; its cache holds the kernel map for the next layer of the same shape.

  Example:
    >>> w = jax.random.normal(key, (3, 3, 3, 32, 64)) * 0.05
    >>> y = conv3d(x, w)               # submanifold: x's coordinates, 64 channels
    >>> w2 = jax.random.normal(key, (2, 2, 2, 64, 64)) * 0.05
    >>> z = conv3d(y, w2, stride=2)    # downsample; conv_transpose3d(z, ...) returns to y's coordinates
  """
  _check_weight(x, weight, 3, "conv3d")
  implementation = _backend.resolve("conv", implementation, x.feats.dtype)
  if kmap is None:
    kmap, y = kernel_map(x, weight.shape[:3], stride=stride, dilation=dilation, padding=padding, capacity=capacity)
  else:
    kmap, y = _given_map(kmap, x, weight.shape[:3], stride, dilation, padding)
  return _apply(x.feats, weight, kmap, bias, y, implementation)


def _given_map(given, x: SparseTensor, kernel_size, stride, dilation, padding):
  """``(kmap, y)`` from a ``kmap=`` argument, checked against the convolution it is used for."""
  st = _coords.as_triple(stride, "stride")
  submanifold = st == (1, 1, 1) and padding is None
  if isinstance(given, _kernel_map.KernelMap):
    if not submanifold:
      raise ValueError("a strided conv needs the output geometry too: pass kmap=kernel_map(x, ..., stride=...), "
                       "the (KernelMap, y) pair.")
    given = (given, x)
  if not (isinstance(given, tuple) and len(given) == 2 and isinstance(given[0], _kernel_map.KernelMap)
          and isinstance(given[1], SparseTensor)):
    raise TypeError(f"kmap must be what kernel_map returns, a (KernelMap, SparseTensor) pair, got "
                    f"{type(given).__name__}.")
  kmap, y = given
  want = (tuple(kernel_size), _coords.as_triple(dilation, "dilation"), x.stride,
          tuple(a * b for a, b in zip(x.stride, st)), x.capacity)
  have = (kmap.kernel_size, kmap.dilation, kmap.src_stride, kmap.dst_stride, kmap.num_src)
  if want != have:
    raise ValueError(f"kmap was built for kernel {have[0]}, dilation {have[1]}, strides {have[2]}->{have[3]} and "
                     f"{have[4]} input rows; this conv has {want[0]}, {want[1]}, {want[2]}->{want[3]} and {want[4]}. "
                     "Build it with kernel_map(x, kernel_size, stride=..., dilation=...) on this x.")
  if submanifold:
    y = x
  return kmap, y.replace(errors=y.errors | x.errors)


def conv_transpose3d(x: SparseTensor, weight: jax.Array, *, stride=2, dilation=1, padding=None,
                     target: SparseTensor | None = None, generative: bool = False, capacity: int | None = None,
                     bias: jax.Array | None = None, implementation: str | None = None) -> SparseTensor:
  """Transposed sparse convolution: the exact adjoint of :func:`conv3d` with the same kernel size, stride and
  dilation.

  It uses the strided conv's ``(input, output, offset)`` pairs with roles swapped, and its output takes exactly
  the coordinates (and row order) of the finer tensor, so a U-Net skip concatenation lines up row for row.

  Args:
    x: the coarse input, with ``C_coarse`` channels.
    weight: ``[kx, ky, kz, C_coarse, C_fine]``.
    stride: the stride of the strided op this undoes (1 gives the adjoint of a submanifold conv).
    dilation: the dilation of the conv this undoes (int or 3 ints).
    padding: the padding of the conv this undoes (None: the Minkowski rule; see :func:`conv3d`).
    generative: make new output coordinates instead of returning to a finer tensor's: every site
      ``c + offset`` reached by an input site and a kernel offset (at the finer stride), deduplicated and sorted,
      as torchsparse's ``generative=True``, MinkowskiEngine's generative transpose and spconv's
      ``SparseConvTranspose3d`` do; the decoder of completion and upsampling networks. Needs ``capacity``.
    capacity: output rows of a generative transposed conv; more sites set ``CAPACITY_OVERFLOW``.
    target: the finer tensor whose coordinates the output takes. Optional when ``x`` descends from a strided op
      on that tensor (the geometry is cached on ``x``). When ``target`` is that tensor (or carries the same
      coordinate arrays), the cached map is reused; any other target costs one map build.
    bias: optional ``[C_fine]``. implementation: as in :func:`conv3d`.
  Returns:
    SparseTensor on the finer coordinates, with the finer tensor's cache.

  Example:
    >>> w_down = jax.random.normal(key, (2, 2, 2, 32, 64)) * 0.05   # [2, 2, 2, C, 2C]
    >>> w_up = jax.random.normal(key, (2, 2, 2, 64, 32)) * 0.05     # [2, 2, 2, 2C, C]
    >>> d = conv3d(x, w_down, stride=2)
    >>> u = conv_transpose3d(d, w_up)   # on x's coordinates, row for row
    >>> bool((u.coords == x.coords).all())
    True
  """
  _check_weight(x, weight, 3, "conv_transpose3d")
  implementation = _backend.resolve("conv", implementation, x.feats.dtype)
  ks = tuple(int(k) for k in weight.shape[:3])
  st = _coords.as_triple(stride, "stride")
  dil = _coords.as_triple(dilation, "dilation")
  _coords.check_conv_geometry(ks, st, dil)
  pad = None if padding is None else _padding(padding, ks, dil)
  if any(a % b for a, b in zip(x.stride, st)):
    raise ValueError(f"conv_transpose3d stride {st} does not divide the tensor stride {x.stride}.")
  fine_stride = tuple(a // b for a, b in zip(x.stride, st))
  if generative:
    if target is not None:
      raise ValueError("conv_transpose3d: generative=True makes its own output coordinates; drop target=.")
    return _generative(x, weight, ks, st, dil, pad, fine_stride, capacity, bias, implementation)
  if capacity is not None:
    raise ValueError("conv_transpose3d: capacity= is for generative=True; without it the output takes the finer "
                     "tensor's coordinates and capacity.")
  if st == (1, 1, 1) and pad is None:
    kmap, x = kernel_map(x, ks, dilation=dil)
    return _apply(x.feats, weight, kmap.T, bias, x, implementation)
  key = _key("down", ks, st, dil) if pad is None else _key("pad", ks, st, dil, pad)
  parent = x.cache.get("parent")
  if target is not None:
    if not isinstance(target, SparseTensor):
      raise TypeError(f"target must be a SparseTensor, got {type(target).__name__}.")
    if target.stride != fine_stride:
      raise ValueError(
          f"target has stride {target.stride}, but a stride-{st} transposed conv from stride {x.stride} lands on "
          f"stride {fine_stride}. Pass the tensor that the matching strided conv was applied to.")
    fine = target.geometry
    is_parent = parent is not None and target.coords is parent.coords and target.num_valid is parent.num_valid
  elif parent is not None:
    fine, is_parent = parent, True
    if fine.stride != fine_stride:
      raise ValueError(
          f"x's cached parent has stride {fine.stride}, not {fine_stride}: this x was made by a stride "
          f"{tuple(a // b for a, b in zip(x.stride, fine.stride))} op. Pass stride= to match it, or target=.")
  else:
    raise ValueError(
        "conv_transpose3d does not know the finer coordinates: x was not produced by a strided conv or pooling "
        "(no cached parent). Pass target=<the finer SparseTensor>.")
  errors = x.errors
  if is_parent and key in x.cache:
    kmap = x.cache[key]
  else:
    fine_x = SparseTensor.from_geometry(fine, jnp.zeros((fine.coords.shape[0], 0), x.feats.dtype))
    index = None
    if not _native_maps(fine_x):
      index, fine_x = ensure_index(fine_x)
    fine = fine_x.geometry
    kmap, map_errors = _kernel_map.strided_map(fine.coords, fine.num_valid, index, x.coords, x.num_valid, None,
                                               ks, st, dil, fine.stride, padding=pad)
    errors = errors | map_errors
    _errors.check_now(errors, "conv_transpose3d")
  y = SparseTensor.from_geometry(fine, jnp.zeros((fine.coords.shape[0], 0), x.feats.dtype), errors=errors)
  return _apply(x.feats, weight, kmap.T, bias, y, implementation)


def _generative(x: SparseTensor, weight, ks, st, dil, pad, fine_stride, capacity, bias, implementation):
  """The generative transposed conv: output sites made from ``x``'s sites and the kernel offsets."""
  if capacity is None:
    raise ValueError("conv_transpose3d(generative=True) needs capacity= (the static number of output rows; up to "
                     f"{math.prod(ks)} x the input's valid rows can be reached). Overflow is flagged, never dropped.")
  if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 0:
    raise TypeError(f"capacity must be a non-negative int, got {capacity!r}.")
  offsets = _coords.kernel_offsets(ks, dil, fine_stride, pad)
  coords, num_valid, errors = _kernel_map.reached_coords(x.coords, x.num_valid, tuple(map(tuple, offsets.tolist())),
                                                         fine_stride, int(capacity))
  fine = SparseTensor(coords, jnp.zeros((int(capacity), 0), x.feats.dtype), num_valid, x.errors | errors, {},
                      fine_stride)
  index = None
  if not _native_maps(fine):
    index, fine = ensure_index(fine)
  kmap, map_errors = _kernel_map.strided_map(fine.coords, fine.num_valid, index, x.coords, x.num_valid, None, ks,
                                             st, dil, fine_stride, padding=pad)
  fine = fine.replace(errors=fine.errors | map_errors)
  _errors.check_now(fine.errors, "generative conv_transpose3d")
  return _apply(x.feats, weight, kmap.T, bias, fine, implementation)
