"""jsparse3d: sparse 3D deep learning in JAX.

Public API:
  SparseTensor        coordinates + features pytree (see CONVENTIONS.md for the layout)
  ops                 pure functions: build_index, query_index, kernel_map, conv3d, conv_transpose3d, pooling, ...
  raise_if_error      raise the data-dependent errors flagged inside jit
  data                generators, readers and batching (synthetic LArTPC, larcv3, SemanticKITTI)
"""

from jsparse3d import data as data
from jsparse3d import ops as ops
from jsparse3d._errors import raise_if_error as raise_if_error
from jsparse3d._sparse_tensor import SparseTensor as SparseTensor

__version__ = "0.1.0"
