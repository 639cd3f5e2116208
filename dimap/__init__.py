"""dimap: Data-independent Module-aware Pruning (He & Zhou, ICLR 2024) for timm Swin and other vision transformers.

Importable without Hydra:

    import timm, dimap
    model = timm.create_model("swin_tiny_patch4_window7_224")
    masks = dimap.compute_masks(model, "dimap", 0.55)   # {param name: bool tensor}, True = kept
    dimap.apply_masks(model, masks)
"""
from dimap.pruning.accounting import account, flops_by_module
from dimap.pruning.criteria import CRITERIA
from dimap.errors import UserError
from dimap.pruning.masks import FixedMask, apply_masks, compute_masks, mask_checksum, masks_from_state_dict
from dimap.pruning.modules import module_map, prunable_weights
from dimap.pruning.pruned_file import read_pruned, save_pruned
from dimap.pruning.scores import dimap_scores

__all__ = ["account", "flops_by_module", "CRITERIA", "UserError", "FixedMask", "apply_masks", "compute_masks",
           "mask_checksum", "masks_from_state_dict", "module_map", "prunable_weights", "read_pruned",
           "save_pruned", "dimap_scores"]
