"""Pure-jnp references of the sparse-convolution kernels, on an output-stationary neighbour table.

``nbr[d, k]`` is the input row that output row ``d`` meets at kernel offset ``k``, or -1.
"""

from __future__ import annotations

import jax.numpy as jnp


def _gathered(x, nbr):
  """``[N_out, K, C]``: the input row of every (output row, offset), zero where there is none."""
  g = x[jnp.maximum(nbr, 0)]
  return jnp.where((nbr >= 0)[..., None], g, jnp.zeros((), x.dtype))


def conv_forward(x, w, nbr):
  """``out[d] = sum_k x[nbr[d, k]] @ w[k]``, accumulated in float32, returned in ``x``'s dtype.

  x: [N_in, C_in]; w: [K, C_in, C_out]; nbr: int32 [N_out, K].
  """
  out = jnp.einsum("nkc,kcd->nd", _gathered(x, nbr).astype(jnp.float32), w.astype(jnp.float32))
  return out.astype(x.dtype)


def conv_wgrad(x, dy, nbr):
  """``dw[k] = sum_d x[nbr[d, k]]^T @ dy[d]`` in float32: [K, C_in, C_out]."""
  return jnp.einsum("nkc,nd->kcd", _gathered(x, nbr).astype(jnp.float32), dy.astype(jnp.float32))
