"""Data for sparse 3D networks: synthetic LArTPC, calorimeter (HGCAL- and HCAL-like), LiDAR and part-shape data;
larcv3, PILArNet-M, INSS2025 Michel-challenge, calorimeter-table, SemanticKITTI and ShapeNet-part readers, and
capacity-bucketed batching.

Every reader and generator returns plain numpy dicts: voxel events (``coords`` int32[N, 3] plus per-voxel arrays)
or point clouds (``points`` float32[P, C] plus per-point arrays). :func:`collate`, :func:`collate_points`,
:func:`collate_shapes` and :class:`Loader` turn them into padded batches.
"""

from jsparse3d.data._augment import augment_lidar
from jsparse3d.data._batching import DEFAULT_BUCKETS
from jsparse3d.data._batching import Loader
from jsparse3d.data._batching import bucket_capacity
from jsparse3d.data._batching import collate
from jsparse3d.data._batching import collate_point_sets
from jsparse3d.data._batching import collate_points
from jsparse3d.data._batching import collate_voxel_points
from jsparse3d.data._calo import HCAL_CLASS_NAMES
from jsparse3d.data._calo import HGCAL_CLASS_NAMES
from jsparse3d.data._calo import SyntheticHCAL
from jsparse3d.data._calo import SyntheticHGCAL
from jsparse3d.data._calo import calo_features
from jsparse3d.data._calo import synthetic_hcal_event
from jsparse3d.data._calo import synthetic_hgcal_event
from jsparse3d.data._calo_files import CaloEvents
from jsparse3d.data._calo_files import write_calo_events
from jsparse3d.data._kitti import CLASS_NAMES as SEMANTICKITTI_CLASS_NAMES
from jsparse3d.data._kitti import SemanticKittiDataset
from jsparse3d.data._kitti import ignore_index
from jsparse3d.data._kitti import learning_map
from jsparse3d.data._kitti import read_semantickitti
from jsparse3d.data._kitti import scan_to_voxels
from jsparse3d.data._kitti import voxelize
from jsparse3d.data._larcv3 import Larcv3Dataset
from jsparse3d.data._larcv3 import write_larcv3
from jsparse3d.data._lartpc import SyntheticLArTPC
from jsparse3d.data._lartpc import synthetic_lartpc_event
from jsparse3d.data._lidar import SyntheticLidar
from jsparse3d.data._lidar import synthetic_lidar_scan
from jsparse3d.data._pilarnet import MOTIF_NAMES as PILARNET_MOTIF_NAMES
from jsparse3d.data._pilarnet import PID_NAMES as PILARNET_PID_NAMES
from jsparse3d.data._pilarnet import MichelChallenge
from jsparse3d.data._pilarnet import PILArNetM
from jsparse3d.data._pilarnet import synthetic_michel_event
from jsparse3d.data._pilarnet import synthetic_pilarnet_event
from jsparse3d.data._pilarnet import write_michel_challenge
from jsparse3d.data._pilarnet import write_pilarnet
from jsparse3d.data._schemes import class_names
from jsparse3d.data._schemes import uresnet5_to_larcv5
from jsparse3d.data._shapes import CATEGORIES as SHAPENET_CATEGORIES
from jsparse3d.data._shapes import PARTS_PER_CATEGORY as SHAPENET_PARTS_PER_CATEGORY
from jsparse3d.data._shapes import ShapeNetPart
from jsparse3d.data._shapes import SyntheticShapeParts
from jsparse3d.data._shapes import collate_shapes
from jsparse3d.data._shapes import synthetic_part_shape

__all__ = [
    "CaloEvents", "DEFAULT_BUCKETS", "HCAL_CLASS_NAMES", "HGCAL_CLASS_NAMES", "Larcv3Dataset", "Loader",
    "MichelChallenge", "PILARNET_MOTIF_NAMES", "PILARNET_PID_NAMES", "PILArNetM", "SEMANTICKITTI_CLASS_NAMES",
    "SHAPENET_CATEGORIES", "SHAPENET_PARTS_PER_CATEGORY", "SemanticKittiDataset", "ShapeNetPart", "SyntheticHCAL",
    "SyntheticHGCAL", "SyntheticLArTPC", "SyntheticLidar", "SyntheticShapeParts", "augment_lidar",
    "bucket_capacity", "calo_features", "class_names", "collate", "collate_point_sets", "collate_points",
    "collate_shapes", "collate_voxel_points", "ignore_index", "learning_map", "read_semantickitti",
    "scan_to_voxels", "synthetic_hcal_event", "synthetic_hgcal_event", "synthetic_lartpc_event",
    "synthetic_lidar_scan", "synthetic_michel_event", "synthetic_part_shape", "synthetic_pilarnet_event",
    "uresnet5_to_larcv5", "voxelize", "write_calo_events", "write_larcv3", "write_michel_challenge",
    "write_pilarnet",
]
