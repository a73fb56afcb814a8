"""Ahead-of-time GPU compilation on a machine without a GPU: lower for CUDA, compile the Triton modules to cubins.

``jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))`` lowers a function that calls Pallas kernels with
Triton compiler parameters on any host. Each kernel becomes a ``__gpu$xla.gpu.triton`` custom call whose backend
config carries the kernel's ``name``, launch settings and its Triton module as MLIR bytecode (``ir``). This module
parses that bytecode with the Triton dialect that jaxlib ships, prints it as ``.ttir`` text, compiles it with the
``triton`` package for a chosen GPU architecture, and reads the cubin's resource usage (registers per thread,
stack, local memory = spills, shared memory) with the ``cuobjdump`` of the triton wheel.

Only :func:`compile_function` and :class:`KernelBuild` are meant for use outside; ``python -m
pallas_kernels.report`` prints the table for every kernel.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from pathlib import Path

import jax

TRITON_CALL = "__gpu$xla.gpu.triton"
ARCHS = (80, 90)  # sm_80 (A100) and sm_90 (H100)


@dataclasses.dataclass(frozen=True)
class KernelBuild:
  """One Triton kernel of a lowered function, compiled for one architecture."""
  name: str
  arch: int
  num_warps: int
  num_stages: int
  grid: tuple[int, int, int]
  registers: int  # per thread
  stack: int  # bytes of stack frame per thread
  local: int  # bytes of local memory per thread
  spill_stores: int  # bytes, from ptxas -v
  spill_loads: int
  shared: int  # bytes per block (static; Triton's dynamic shared memory is in shared_dynamic)
  shared_dynamic: int
  mma: bool  # tensor-core instructions in the SASS


def triton_calls(lowered) -> list[dict]:
  """The Triton custom calls of a lowered function: ``name``, ``ir`` (bytes), ``num_warps``, ``num_stages``,
  ``grid``, in program order."""
  from jaxlib.mlir import ir as mlir_ir  # jaxlib's MLIR bindings (what jax's private jax._src.lib.mlir re-exports)
  module = lowered.compiler_ir("stablehlo")
  calls = []

  def visit(op):
    if op.name == "stablehlo.custom_call":
      target = mlir_ir.StringAttr(op.attributes["call_target_name"]).value
      if target == TRITON_CALL:
        cfg = mlir_ir.DictAttr(op.attributes["mhlo.backend_config"])
        get_int = lambda k: mlir_ir.IntegerAttr(cfg[k]).value
        calls.append(dict(name=mlir_ir.StringAttr(cfg["name"]).value,
                          ir=mlir_ir.StringAttr(cfg["ir"]).value_bytes,
                          num_warps=get_int("num_warps"), num_stages=get_int("num_stages"),
                          grid=(get_int("grid_x"), get_int("grid_y"), get_int("grid_z"))))
    for region in op.regions:
      for block in region.blocks:
        for inner in block.operations:
          visit(inner.operation)

  visit(module.operation)
  return calls


def ttir_text(ir_bytes: bytes) -> str:
  """The Triton module's text without debug locations (what ``triton.compile`` reads from a ``.ttir`` file)."""
  from jaxlib.mlir import ir as mlir_ir
  from jaxlib.triton import dialect as triton_dialect  # jaxlib's Triton dialect bindings
  with mlir_ir.Context() as ctx:
    triton_dialect.register_dialect(ctx)
    module = mlir_ir.Module.parse(ir_bytes)
    return module.operation.get_asm(enable_debug_info=False)


def _tool(name: str) -> Path:
  """A CUDA tool the triton wheel ships (cuobjdump, ptxas)."""
  import triton
  path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: the triton wheel ships {name} there (pip install triton).")
  return path


_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_call(call: dict, arch: int, workdir: Path) -> KernelBuild:
  """Compiles one Triton call for ``sm_<arch>`` and reads its resource usage."""
  import triton
  from triton.backends.compiler import GPUTarget
  src = workdir / f"{call['name']}_sm{arch}.ttir"
  src.write_text(ttir_text(call["ir"]))
  compiled = triton.compile(str(src), target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=call["num_warps"], num_stages=call["num_stages"],
                                         enable_fp_fusion=True))
  cubin = workdir / f"{call['name']}_sm{arch}.cubin"
  cubin.write_bytes(compiled.asm["cubin"])
  usage = subprocess.run([str(_tool("cuobjdump")), "--dump-resource-usage", str(cubin)], capture_output=True,
                         text=True, check=True).stdout
  m = _USAGE.search(usage)
  if m is None:
    raise RuntimeError(f"cuobjdump printed no resource usage for {cubin}:\n{usage}")
  reg, stack, shared, local = (int(v) for v in m.groups())
  ptx = workdir / f"{call['name']}_sm{arch}.ptx"
  ptx.write_text(compiled.asm["ptx"])
  from triton.backends.nvidia.compiler import get_ptxas
  target = re.search(r"^\.target\s+(\S+)", compiled.asm["ptx"], re.M).group(1)  # e.g. sm_90a
  verbose = subprocess.run([get_ptxas(arch).path, f"-arch={target}", "-v", str(ptx), "-o", str(ptx) + ".o"],
                           capture_output=True, text=True, check=True)
  spills = _SPILLS.findall(verbose.stdout + verbose.stderr)
  if not spills:
    raise RuntimeError(f"ptxas -v printed no spill line for {ptx}:\n{verbose.stderr}")
  spill_stores, spill_loads = (sum(int(s[i]) for s in spills) for i in (0, 1))
  mma = bool(re.search(r"\b(mma\.sync|wgmma)", compiled.asm["ptx"]))
  return KernelBuild(name=call["name"], arch=arch, num_warps=call["num_warps"], num_stages=call["num_stages"],
                     grid=call["grid"], registers=reg, stack=stack, local=local, spill_stores=spill_stores,
                     spill_loads=spill_loads, shared=shared,
                     shared_dynamic=int(compiled.metadata.shared), mma=mma)


# The GPU that jax >= 0.11 describes when it lowers Pallas Triton kernels with no GPU present.
_DEVICE_KIND = {80: "NVIDIA A100", 90: "NVIDIA H100"}


def lower_for_cuda(fn, *args, arch: int = 90, **kwargs):
  """``jax.jit(fn).trace(*args, **kwargs).lower(lowering_platforms=("cuda",))``: works with no GPU present.

  jax 0.10 lowers Triton kernels without asking for a device; jax 0.11 asks for the GPU's kind, which a CPU-only
  host gives through an abstract mesh whose abstract device is an A100 (``arch`` 80) or H100 (90).
  """
  lower = lambda: jax.jit(fn).trace(*args, **kwargs).lower(lowering_platforms=("cuda",))
  abstract_device = getattr(jax.sharding, "AbstractDevice", None)
  if abstract_device is None:  # jax 0.10
    return lower()
  mesh = jax.sharding.AbstractMesh((1,), ("gpu",), abstract_device=abstract_device(_DEVICE_KIND[arch], None, "cuda"))
  with jax.sharding.use_abstract_mesh(mesh):
    return lower()


def compile_function(fn, *args, archs=ARCHS, **kwargs) -> list[KernelBuild]:
  """Lowers ``fn(*args)`` for CUDA and compiles every Triton kernel in it for each architecture.

  Raises if the function holds no Triton kernel (a kernel that silently fell back to another backend must not
  pass for compiled).
  """
  builds = []
  with tempfile.TemporaryDirectory() as tmp:
    for arch in archs:
      calls = triton_calls(lower_for_cuda(fn, *args, arch=arch, **kwargs))
      if not calls:
        raise ValueError("the lowered function contains no Triton kernel; were the Triton compiler params passed?")
      builds += [compile_call(call, arch, Path(tmp)) for call in calls]
  return builds
