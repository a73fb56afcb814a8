"""Flax NNX layers on SparseTensors (padded rows stay zero; ``rngs`` keyword-only; ``dtype`` / ``param_dtype``).

Parameter-free pieces are the functions of :mod:`jsparse3d.ops` (``relu``, ``leaky_relu``, ``cat``,
``global_avg_pool``, ``voxelize``, ``point_to_voxel``, ``voxel_to_point``, ...).
"""

from jsparse3d.nn._layers import BatchNorm as BatchNorm
from jsparse3d.nn._layers import Dropout as Dropout
from jsparse3d.nn._layers import Linear as Linear
from jsparse3d.nn._layers import SparseConv3d as SparseConv3d
from jsparse3d.nn._layers import SparseConvTranspose3d as SparseConvTranspose3d
from jsparse3d.nn._macs import count_macs as count_macs
