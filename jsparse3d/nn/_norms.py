"""Normalisations over the valid rows of each event: LayerNorm (per row), GroupNorm and InstanceNorm (per event).

Statistics are float32 whatever the input dtype, the variance is the biased one, and padded rows neither enter
the statistics nor leave zeros. An event's statistics come from its own rows only, so the result for an event does
not depend on the other events of the batch or on the padding (the per-event analogue of torch's GroupNorm on
one sample, as MinkowskiEngine's and torchsparse's instance norms compute it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsparse3d._sparse_tensor import SparseTensor


def _affine(num_features: int, use_scale: bool, use_bias: bool, param_dtype):
  scale = nnx.Param(jnp.ones((num_features,), param_dtype)) if use_scale else None
  bias = nnx.Param(jnp.zeros((num_features,), param_dtype)) if use_bias else None
  return scale, bias


def _finish(x: SparseTensor, y, scale, bias, dtype) -> SparseTensor:
  """Applies the affine parameters, casts, and zeroes the padded rows."""
  if scale is not None:
    y = y * scale[...].astype(jnp.float32)[None, :]
  if bias is not None:
    y = y + bias[...].astype(jnp.float32)[None, :]
  y = jnp.where(x.valid_mask[:, None], y, 0.0)
  return x.replace(feats=y.astype(dtype or x.feats.dtype))


def _num_events(x: SparseTensor, num_events: int | None) -> int:
  if num_events is not None:
    if not isinstance(num_events, (int, np.integer)) or num_events < 1:
      raise ValueError(f"num_events must be a positive int (the static number of events), got {num_events!r}.")
    return int(num_events)
  if isinstance(x.coords, jax.core.Tracer):
    raise ValueError("under jit, pass num_events= (the static number of events in the batch, e.g. the batch size) "
                     "to per-event normalisations.")
  n = int(x.num_valid)
  return int(np.asarray(x.coords)[:n, 0].max(initial=-1)) + 1 or 1


class _PerEventNorm(nnx.Module):
  """Normalises each (event, channel group) over the event's valid rows."""

  def __init__(self, num_features: int, num_groups: int, *, epsilon: float, use_scale: bool, use_bias: bool,
               dtype, param_dtype):
    if num_groups < 1 or num_features % num_groups:
      raise ValueError(f"num_groups ({num_groups}) must divide num_features ({num_features}); e.g. "
                       f"num_groups={next(g for g in (32, 16, 8, 4, 2, 1) if num_features % g == 0)}.")
    self.num_features, self.num_groups, self.epsilon, self.dtype = num_features, num_groups, epsilon, dtype
    self.scale, self.bias = _affine(num_features, use_scale, use_bias, param_dtype)

  def __call__(self, x: SparseTensor, *, num_events: int | None = None) -> SparseTensor:
    """``x``: a SparseTensor with ``num_features`` channels. ``num_events``: static number of events (batch
    indices ``0..num_events-1``); eagerly it defaults to the largest batch index plus one."""
    if not isinstance(x, SparseTensor):
      raise TypeError(f"{type(self).__name__} takes a SparseTensor, got {type(x).__name__}.")
    if x.num_channels != self.num_features:
      raise ValueError(f"{type(self).__name__} was built for {self.num_features} channels, the tensor has "
                       f"{x.num_channels}.")
    b = _num_events(x, num_events)
    n, c, g = x.capacity, self.num_features, self.num_groups
    valid = x.valid_mask & (x.coords[:, 0] < b)
    ids = jnp.where(valid, x.coords[:, 0], b)
    xf = jnp.where(valid[:, None], x.feats.astype(jnp.float32), 0.0).reshape(n, g, c // g)
    sums = jax.ops.segment_sum(jnp.stack([xf.sum(-1), (xf * xf).sum(-1)], axis=-1), ids, num_segments=b + 1)
    rows = jax.ops.segment_sum(valid.astype(jnp.float32), ids, num_segments=b + 1)
    count = jnp.maximum(rows * (c // g), 1.0)[:, None]  # an event without rows: zero statistics, not NaN
    mean = sums[..., 0] / count
    var = jnp.maximum(sums[..., 1] / count - mean * mean, 0.0)
    y = (xf - mean[ids][:, :, None]) * jax.lax.rsqrt(var[ids] + self.epsilon)[:, :, None]
    return _finish(x, y.reshape(n, c), self.scale, self.bias, self.dtype)


class GroupNorm(_PerEventNorm):
  """Group normalisation per event: channels in ``num_groups`` groups, each normalised over the event's valid
  rows and the group's channels.

  Args:
    num_features: channels. num_groups: groups (must divide ``num_features``; 32 as in Wu & He where it fits).
    epsilon, use_scale, use_bias, dtype, param_dtype: as in :class:`flax.nnx.GroupNorm`.

  Example:
    >>> norm = GroupNorm(32, 8, rngs=nnx.Rngs(0))
    >>> y = norm(x, num_events=2)          # num_events is static (the batch size) under jit
  """

  def __init__(self, num_features: int, num_groups: int = 32, *, epsilon: float = 1e-5, use_scale: bool = True,
               use_bias: bool = True, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs  # no random initialisation; accepted for a uniform layer signature
    super().__init__(num_features, min(num_groups, num_features), epsilon=epsilon, use_scale=use_scale,
                     use_bias=use_bias, dtype=dtype, param_dtype=param_dtype)


class InstanceNorm(_PerEventNorm):
  """Instance normalisation: each channel of each event normalised over the event's valid rows (GroupNorm with
  one channel per group; MinkowskiEngine's ``MinkowskiInstanceNorm``).

  Example:
    >>> y = InstanceNorm(32, rngs=nnx.Rngs(0))(x, num_events=2)
  """

  def __init__(self, num_features: int, *, epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs
    super().__init__(num_features, num_features, epsilon=epsilon, use_scale=use_scale, use_bias=use_bias,
                     dtype=dtype, param_dtype=param_dtype)


class LayerNorm(nnx.Module):
  """Layer normalisation of each valid row over its channels; padded rows stay zero.

  Example:
    >>> y = LayerNorm(32, rngs=nnx.Rngs(0))(x)
  """

  def __init__(self, num_features: int, *, epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs
    self.num_features, self.epsilon, self.dtype = num_features, epsilon, dtype
    self.scale, self.bias = _affine(num_features, use_scale, use_bias, param_dtype)

  def __call__(self, x: SparseTensor) -> SparseTensor:
    if not isinstance(x, SparseTensor):
      raise TypeError(f"LayerNorm takes a SparseTensor, got {type(x).__name__}.")
    if x.num_channels != self.num_features:
      raise ValueError(f"LayerNorm was built for {self.num_features} channels, the tensor has {x.num_channels}.")
    xf = x.feats.astype(jnp.float32)
    mean = xf.mean(axis=-1, keepdims=True)
    var = jnp.maximum((xf * xf).mean(axis=-1, keepdims=True) - mean * mean, 0.0)
    return _finish(x, (xf - mean) * jax.lax.rsqrt(var + self.epsilon), self.scale, self.bias, self.dtype)
