"""Training pieces (no CLI, no file I/O): losses, metrics and jitted / pmapped step builders."""

from jsparse3d.training._adam import FusedAdam as FusedAdam
from jsparse3d.training._adam import apply_gradients as apply_gradients
from jsparse3d.training._adam import fused_adam as fused_adam
from jsparse3d.training._calo_metrics import match_clusters as match_clusters
from jsparse3d.training._calo_metrics import panoptic_counts as panoptic_counts
from jsparse3d.training._calo_metrics import panoptic_quality as panoptic_quality
from jsparse3d.training._calo_metrics import roc_auc as roc_auc
from jsparse3d.training._calo_metrics import roc_curve as roc_curve
from jsparse3d.training._calo_metrics import row_normalised as row_normalised
from jsparse3d.training._calo_metrics import weighted_confusion as weighted_confusion
from jsparse3d.training._instances import check_instances as check_instances
from jsparse3d.training._instances import cluster_embeddings as cluster_embeddings
from jsparse3d.training._instances import discriminative_loss as discriminative_loss
from jsparse3d.training._losses import check_labels as check_labels
from jsparse3d.training._losses import class_weights_inverse_frequency as class_weights_inverse_frequency
from jsparse3d.training._losses import segmentation_loss as segmentation_loss
from jsparse3d.training._losses import segmentation_loss_terms as segmentation_loss_terms
from jsparse3d.training._memory import release_freed_memory as release_freed_memory
from jsparse3d.training._metrics import ConfusionMatrix as ConfusionMatrix
from jsparse3d.training._metrics import confusion_matrix as confusion_matrix
from jsparse3d.training._metrics import part_ious as part_ious
from jsparse3d.training._steps import make_eval_step as make_eval_step
from jsparse3d.training._steps import make_train_step as make_train_step
from jsparse3d.training._steps import per_device_keys as per_device_keys
from jsparse3d.training._steps import sparse_logits as sparse_logits
from jsparse3d.training._steps import voxel_point_logits as voxel_point_logits
