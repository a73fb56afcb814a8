"""Models: the sparse U-ResNet and its dense twin (LArTPC), MinkUNet and SPVCNN (SemanticKITTI), PVCNN and its
point-only baseline PointNet.

Parameter counts match the published implementations exactly (tests check them); ``jsparse3d.nn.count_macs``
gives each model's MACs over real data.
"""

from jsparse3d.models._minkunet import SPVCNN as SPVCNN
from jsparse3d.models._minkunet import MinkUNet as MinkUNet
from jsparse3d.models._pointnet import PointNet as PointNet
from jsparse3d.models._pvcnn import PVCNN as PVCNN
from jsparse3d.models._uresnet import UResNet as UResNet
from jsparse3d.models._uresnet_dense import DenseUResNet as DenseUResNet
from jsparse3d.models._uresnet_dense import nonempty_mask as nonempty_mask
