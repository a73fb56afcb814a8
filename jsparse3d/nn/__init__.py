"""Flax NNX layers on SparseTensors (padded rows stay zero; ``rngs`` keyword-only; ``dtype`` / ``param_dtype``).

Parameter-free pieces are functions, re-exported here from :mod:`jsparse3d.ops`: activations that keep padded
rows zero, skip concatenation, global pooling and the point-voxel operations.
"""

from jsparse3d._macs import count_macs as count_macs
from jsparse3d.nn._layers import BatchNorm as BatchNorm
from jsparse3d.nn._layers import Dropout as Dropout
from jsparse3d.nn._layers import Linear as Linear
from jsparse3d.nn._layers import SparseConv3d as SparseConv3d
from jsparse3d.nn._layers import SparseConvTranspose3d as SparseConvTranspose3d
from jsparse3d.nn._layers import sync_batch_norm as sync_batch_norm
from jsparse3d.nn._norms import GroupNorm as GroupNorm
from jsparse3d.nn._norms import InstanceNorm as InstanceNorm
from jsparse3d.nn._norms import LayerNorm as LayerNorm
from jsparse3d.nn._weights import export_torch_weights as export_torch_weights
from jsparse3d.nn._weights import import_torch_weights as import_torch_weights
from jsparse3d.nn._weights import load_weights as load_weights
from jsparse3d.nn._weights import save_weights as save_weights
from jsparse3d.ops import cat as cat
from jsparse3d.ops import gelu as gelu
from jsparse3d.ops import global_avg_pool as global_avg_pool
from jsparse3d.ops import global_max_pool as global_max_pool
from jsparse3d.ops import leaky_relu as leaky_relu
from jsparse3d.ops import point_to_voxel as point_to_voxel
from jsparse3d.ops import relu as relu
from jsparse3d.ops import sigmoid as sigmoid
from jsparse3d.ops import silu as silu
from jsparse3d.ops import tanh as tanh
from jsparse3d.ops import voxel_to_point as voxel_to_point
from jsparse3d.ops import voxelize as voxelize
