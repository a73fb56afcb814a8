"""Data for sparse 3D networks: synthetic LArTPC and calorimeter events, larcv3 and SemanticKITTI readers, and
capacity-bucketed batching.

Every reader and generator returns plain numpy dicts (``coords`` int32[N, 3] plus per-voxel arrays);
:func:`collate` and :class:`Loader` turn them into padded :class:`jsparse3d.SparseTensor` batches.
"""

from jsparse3d.data._batching import DEFAULT_BUCKETS
from jsparse3d.data._batching import Loader
from jsparse3d.data._batching import bucket_capacity
from jsparse3d.data._batching import collate
from jsparse3d.data._calo import synthetic_calo_event
from jsparse3d.data._kitti import SemanticKittiDataset
from jsparse3d.data._kitti import learning_map
from jsparse3d.data._kitti import read_semantickitti
from jsparse3d.data._kitti import voxelize
from jsparse3d.data._lartpc import SyntheticLArTPC
from jsparse3d.data._lartpc import synthetic_lartpc_event
from jsparse3d.data._larcv3 import Larcv3Dataset
from jsparse3d.data._larcv3 import write_larcv3
from jsparse3d.data._schemes import class_names
from jsparse3d.data._schemes import uresnet5_to_larcv5

__all__ = [
    "DEFAULT_BUCKETS", "Larcv3Dataset", "Loader", "SemanticKittiDataset", "SyntheticLArTPC", "bucket_capacity",
    "class_names", "collate", "learning_map", "read_semantickitti", "synthetic_calo_event", "synthetic_lartpc_event",
    "uresnet5_to_larcv5", "voxelize", "write_larcv3",
]
