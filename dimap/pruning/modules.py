"""Which Swin weights belong to which DIMAP module (spec section 1).

QKV-M, PRJ-M and MLP-M are network-wide: each holds that kind of linear layer from every block of every
stage. Everything else (norms, patch embedding, patch merging, biases, relative-position tables, final norm,
head) is AUX-M and never pruned.
"""
import re

import torch
from torch import nn

from dimap.errors import UserError

QKV, PRJ, MLP, AUX = "QKV-M", "PRJ-M", "MLP-M", "AUX-M"
PRUNABLE_MODULES = (QKV, PRJ, MLP)

# The optional prefix admits wrapped models (DDP's `module.`, torch.compile's `_orig_mod.`).
_BLOCK = r"^(?:.*\.)?layers\.\d+\.blocks\.\d+\."
_PATTERNS = (
    (re.compile(_BLOCK + r"attn\.qkv\.weight$"), QKV),  # fused 3C x C matrix: one layer
    (re.compile(_BLOCK + r"attn\.proj\.weight$"), PRJ),
    (re.compile(_BLOCK + r"mlp\.fc[12]\.weight$"), MLP),
)


def module_of(name: str) -> str:
    """The DIMAP module a parameter name belongs to: QKV-M, PRJ-M, MLP-M or AUX-M."""
    for pattern, module in _PATTERNS:
        if pattern.match(name):
            return module
    return AUX


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The prunable weight matrices of `model`, by parameter name, in `named_parameters()` order."""
    weights = {n: p for n, p in model.named_parameters() if module_of(n) != AUX}
    if not weights:
        raise UserError(
            f"{type(model).__name__} has no prunable layers (expected timm Swin names like "
            "layers.0.blocks.0.attn.qkv.weight): use a timm SwinTransformer model"
        )
    return weights


def modules_of(names) -> dict[str, list[str]]:
    """Group prunable parameter names by module, keeping their order."""
    groups = {m: [] for m in PRUNABLE_MODULES}
    for n in names:
        groups[module_of(n)].append(n)
    return {m: ns for m, ns in groups.items() if ns}
