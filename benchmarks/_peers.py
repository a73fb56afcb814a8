"""The peer libraries, imported the one way every benchmark script uses them (run as ``python
benchmarks/<name>.py``, which puts this folder on the import path)."""

from __future__ import annotations


def import_spconv():
  """``(torch, spconv.pytorch)``, ready for CPU training: spconv 2.3.8's CPU backward asks for a CUDA stream before
  it takes its CPU branch, so on a CPU-only torch its stream query answers 0. ImportError when spconv is absent."""
  import spconv.pytorch as spc
  import torch
  from spconv.pytorch import ops as spc_ops
  if not torch.cuda.is_available():
    spc_ops.get_current_stream = lambda: 0
  return torch, spc
