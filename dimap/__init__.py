"""dimap: Data-independent Module-aware Pruning (He & Zhou, ICLR 2024) for timm Swin and other vision transformers.

Importable without Hydra:

    import timm, dimap
    model = timm.create_model("swin_tiny_patch4_window7_224")
    masks = dimap.compute_masks(model, "dimap", 0.55)   # {param name: bool tensor}, True = kept
    dimap.apply_masks(model, masks)
"""
import warnings

# fvcore (imported below) decorates functions with torch.jit.script, which torch 2.14 deprecates: one FutureWarning
# on every command, about code that is not ours. Silenced for exactly that message.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from dimap.pruning.accounting import account, flops_by_module  # noqa: E402
from dimap.pruning.criteria import CRITERIA  # noqa: E402
from dimap.errors import UserError  # noqa: E402
from dimap.pruning.masks import FixedMask, apply_masks, compute_masks, mask_checksum, masks_from_state_dict  # noqa: E402
from dimap.pruning.modules import module_map, prunable_weights  # noqa: E402
from dimap.pruning.pruned_file import read_pruned, save_pruned  # noqa: E402
from dimap.pruning.scores import dimap_scores  # noqa: E402

__all__ = ["account", "flops_by_module", "CRITERIA", "UserError", "FixedMask", "apply_masks", "compute_masks",
           "mask_checksum", "masks_from_state_dict", "module_map", "prunable_weights", "read_pruned",
           "save_pruned", "dimap_scores"]
