"""Exporting jitted functions that use jsparse3d, and loading them in another process.

On the CPU the native kernels are XLA custom calls (FFI handlers) whose targets jax.export does not know to be
stable, so plain ``jax.export.export`` refuses them. :func:`export` declares them: jsparse3d promises that a
target name (``jsparse3d_<kernel>_v<N>``) keeps its operands, attributes and results for as long as the library
registers it; a changed handler gets a new name. :func:`deserialize` registers the targets (building the kernels if
needed) before handing the program to jax.

The XLA path (``implementation="xla"``, or ``JSPARSE3D_NATIVE=0``) exports with plain ``jax.export``: it holds no
custom calls. On a GPU the Pallas kernels lower to Triton custom calls that embed their compiled kernels; such an
export runs on the GPU generation it was compiled for.
"""

from __future__ import annotations

from typing import Callable
from typing import Sequence

import jax
from jax import export as jax_export

from jsparse3d.ops import _native


def export(fun: Callable, *, platforms: Sequence[str] | None = None,
           disabled_checks: Sequence[jax_export.DisabledSafetyCheck] = ()) -> Callable[..., jax_export.Exported]:
  """:func:`jax.export.export` for functions that call jsparse3d: same signature, same result.

  Args:
    fun: a function or ``jax.jit`` of one. Its arguments and results must be arrays or pytrees that
      jax.export serialises (tuples, lists, dicts): pass a SparseTensor's ``coords``, ``feats`` and
      ``num_valid`` and rebuild it inside, and a Flax NNX state as its leaves (``jax.tree.flatten``).
    platforms, disabled_checks: as in :func:`jax.export.export`; the jsparse3d custom-call checks are added.
  Returns:
    ``fn(*args, **kwargs) -> jax.export.Exported`` (arguments may be ``jax.ShapeDtypeStruct``).

  Example:
    >>> w = jax.random.normal(key, (3, 3, 3, 32, 32)) * 0.05
    >>> rebuild = lambda coords, feats, n: jsparse3d.SparseTensor(coords, feats, n, jnp.zeros((), jnp.int32), {},
    ...                                                          (1, 1, 1))   # no flags, no cache, stride 1
    >>> f = lambda coords, feats, n: jsparse3d.ops.conv3d(rebuild(coords, feats, n), w).feats
    >>> blob = jsparse3d.export(jax.jit(f))(x.coords, x.feats, x.num_valid).serialize()
    >>> out = jsparse3d.deserialize(blob).call(x.coords, x.feats, x.num_valid)   # in another process too
  """
  checks = [jax_export.DisabledSafetyCheck.custom_call(t) for t in _native.TARGETS] + list(disabled_checks)
  jitted = fun if hasattr(fun, "lower") else jax.jit(fun)
  return jax_export.export(jitted, platforms=platforms, disabled_checks=checks)


def deserialize(blob: bytes | bytearray) -> jax_export.Exported:
  """:func:`jax.export.deserialize` after registering jsparse3d's CPU custom-call targets (a no-op for programs
  exported from the XLA path). Raises if the program needs the native kernels and they cannot be built here."""
  exported = jax_export.deserialize(bytearray(blob))
  if "cpu" in exported.platforms:
    module = exported.mlir_module()
    if any(t in module for t in _native.TARGETS):
      _native.require()
  return exported
