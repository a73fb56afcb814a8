"""Pallas GPU kernels of jsparse3d (hash build and query, gather-GEMM sparse convolution, trilinear devoxelize).

Each kernel sits beside a pure-jnp reference; ``api`` modules validate inputs and choose block sizes. On CPU they
run in Pallas interpret mode (tests); for GPUs they lower through Triton, and ``python -m pallas_kernels.report``
compiles every kernel for sm_80 and sm_90 here, with no GPU, and prints registers, spills and shared memory.
``python -m pallas_kernels.gpu_check`` checks, times and tunes them on a GPU in one command (docs/gpu.md).
"""

from pallas_kernels import _config

_config.check_jax_version()
