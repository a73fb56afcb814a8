"""jsparse3d: sparse 3D deep learning in JAX.

Public API:
  SparseTensor        coordinates + features pytree (layout: docs/conventions.md)
  ops                 pure functions: build_index, query_index, kernel_map, conv3d, conv_transpose3d, pooling, ...
  nn                  Flax NNX layers (sparse convolutions, masked batch norm, point-voxel ops, MAC counting)
  models              UResNet and its dense twin, MinkUNet, SPVCNN, PVCNN
  nas                 3D-NAS: elastic supernets, subnet scoring, evolutionary search, latency tables, export
  data                generators, readers and batching (synthetic LArTPC, larcv3, SemanticKITTI, ...)
  training            losses, metrics and jitted / pmapped train and eval steps
  raise_if_error      raise the data-dependent errors flagged inside jit
  export, deserialize jax.export for functions that use jsparse3d (declares its custom calls)
"""

from jsparse3d import data as data
from jsparse3d import models as models
from jsparse3d import nas as nas
from jsparse3d import nn as nn
from jsparse3d import ops as ops
from jsparse3d import training as training
from jsparse3d._errors import raise_if_error as raise_if_error
from jsparse3d._export import deserialize as deserialize
from jsparse3d._export import export as export
from jsparse3d._sparse_tensor import SparseTensor as SparseTensor

__version__ = "0.1.0"
