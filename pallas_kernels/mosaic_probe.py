"""What moving the kernels from Pallas' Triton lowering (deprecated from jax 0.11) to Mosaic GPU would take.

  python -m pallas_kernels.mosaic_probe

Lowers, for CUDA and with no GPU, the operations our kernels are made of, written with Mosaic GPU's Pallas API,
and prints which lower and the first line of the error of those that do not. docs/gpu.md records the answer for
the jax in use; rerun it on a newer jax to see what changed.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

N, C, M = 1024, 128, 128  # table rows, channels (512-byte float32 rows), rows gathered per program (a
# multiple of 128, as Mosaic GPU wants of an index vector)
_F32 = jnp.float32


def _lowers(kernel, out_shape, args, **kwargs) -> str:
  """``"lowers"`` or the first line of the error."""
  try:
    call = pl.pallas_call(kernel, out_shape=out_shape, compiler_params=plgpu.CompilerParams(), **kwargs)
    with warnings.catch_warnings():  # pallas_call for Mosaic GPU is deprecated for plgpu.kernel; same lowering
      warnings.simplefilter("ignore", DeprecationWarning)
      jax.jit(call).trace(*args).lower(lowering_platforms=("cuda",))
    return "lowers"
  except Exception as e:  # noqa: BLE001 - an unsupported feature is the finding
    first = next(iter(str(e).strip().splitlines()), "")  # some failures (a bare assert in jax) carry no message
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def _vector_gather(idx_ref, x_ref, o_ref):
  o_ref[...] = x_ref[idx_ref[...], :]  # how the Triton kernels gather: one index vector for a tile of rows


def _row_copies(idx_ref, x_ref, o_ref, buf, barrier):
  def one(i, carry):  # one asynchronous copy per row, by a scalar index read from shared memory
    plgpu.copy_gmem_to_smem(x_ref.at[pl.ds(idx_ref[i], 1)], buf.at[pl.ds(i, 1)], barrier)
    return carry
  jax.lax.fori_loop(0, M, one, 0)
  plgpu.barrier_wait(barrier)
  o_ref[...] = buf[...]


def _plain_dot(x_ref, w_ref, o_ref):
  o_ref[...] = jnp.dot(x_ref[...], w_ref[...], preferred_element_type=_F32)  # what pl_triton.dot does


def _scalar_row_load(idx_ref, x_ref, o_ref):
  def one(i, carry):
    o_ref[pl.ds(i, 1), :] = x_ref[pl.ds(idx_ref[i], 1), :]
    return carry
  jax.lax.fori_loop(0, M, one, 0)


def _atomic_slots(idx_ref, v_ref, slots_ref):
  plgpu.atomic_max(slots_ref.at[idx_ref[...]], v_ref[...])  # the hash build: a vector of slots at once


def probes() -> dict[str, str]:
  """Each probe's name and result (``"lowers"`` or the error)."""
  idx = jax.ShapeDtypeStruct((M,), jnp.int32)
  x = jax.ShapeDtypeStruct((N, C), _F32)
  rows = jax.ShapeDtypeStruct((M, C), _F32)
  smem, gmem = pl.BlockSpec(memory_space=plgpu.SMEM), pl.BlockSpec(memory_space=plgpu.GMEM)
  small = jax.ShapeDtypeStruct((256, 32), _F32)
  return {
      "gather rows by an index vector (shared memory)": _lowers(
          _vector_gather, jax.ShapeDtypeStruct((M, 32), _F32), (idx, small)),
      "gather rows by an index vector (global memory)": _lowers(
          _vector_gather, rows, (idx, x), in_specs=[smem, gmem]),
      "load one row by a scalar index, 32 channels": _lowers(
          _scalar_row_load, jax.ShapeDtypeStruct((M, 32), _F32), (idx, small)),
      "copy rows global -> shared one at a time by scalar indices (TMA)": _lowers(
          _row_copies, rows, (idx, x), in_specs=[smem, gmem],
          scratch_shapes=[plgpu.SMEM((M, C), _F32), plgpu.Barrier(num_arrivals=M)]),
      "atomic max into global slots by an index vector": _lowers(
          _atomic_slots, jax.ShapeDtypeStruct((N,), jnp.int32), (idx, jax.ShapeDtypeStruct((M,), jnp.int32)),
          in_specs=[smem, smem], out_specs=gmem),
      "jnp.dot of two bfloat16 tiles": _lowers(
          _plain_dot, jax.ShapeDtypeStruct((128, 64), _F32),
          (jax.ShapeDtypeStruct((128, 64), jnp.bfloat16), jax.ShapeDtypeStruct((64, 64), jnp.bfloat16))),
  }


def main() -> dict[str, str]:
  results = probes()
  print(f"Mosaic GPU lowering with jax {jax.__version__} (no GPU needed):")
  for name, result in results.items():
    print(f"  {name}: {result}")
  return results


if __name__ == "__main__":
  main()
