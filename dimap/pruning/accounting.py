"""Parameter and FLOP accounting (docs/method.md, section 6).

FLOPs are fvcore's: one multiply-add counts as one FLOP, at batch 1. Three conventions, clearly named:
- flops_dense: the unpruned model.
- flops_paper: the paper's convention (how its Table 1 was computed): dense minus r x FLOPs of the prunable
  linear layers, r being the share of prunable weights removed.
- flops_sparse: each prunable linear layer's FLOPs scaled by its own kept fraction; attention matmuls, norms
  and everything else stay dense. DIMAP prunes deep layers (few tokens) hardest, so this reduction is smaller.
- flops_nm_kernel (prune.pattern N:M): what an N:M kernel executes: each exactly N:M layer at N/M of its dense
  FLOPs, every other layer (dense, or unstructured-sparse) at its full dense FLOPs.
- weight_bytes_16bit_dense / weight_bytes_16bit_nm: the model's weights in fp16/bf16, dense, and with every N:M
  layer compressed as torch.sparse.to_sparse_semi_structured stores it: N/M of the values (2 bytes each) plus a
  ceil(log2 M)-bit index per kept value. For 2:4: numel x (1 + 1/8) bytes = 9/16 of dense, torch's
  compression factor for fp16/bf16 (other N:M: the same formula, no kernel of torch's runs them).
- flops_official_*: the official Swin code's analytic count (`flops_official`), the one the paper's FLOPs column
  was computed with (it gives the paper's dense 4.5 / 8.7 / 15.4 G); fvcore stays the measured count.
"""
import contextlib
import math

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from dimap.pruning.modules import PRUNABLE_MODULES, module_map
from dimap.pruning.patterns import layer_kind


# timm's per-module switches, and the value that makes every FLOP visible to fvcore, layer by layer:
# fvcore does not count scaled_dot_product_attention (fused_attn=False: timm's explicit attention), and SwinV2
# calls F.linear with its qkv weight when it has q/v biases, which hides that layer from a per-module count
# (qkv_bias_separate=True: it calls its qkv module and adds the bias after).
COUNTABLE = {"fused_attn": False, "qkv_bias_separate": True}


@contextlib.contextmanager
def unfused_attention(model: nn.Module):
    """Set timm's switches to COUNTABLE while counting, and back after."""
    saved = [(m, k, getattr(m, k)) for m in model.modules() for k in COUNTABLE if hasattr(m, k)]
    for m, k, _ in saved:
        setattr(m, k, COUNTABLE[k])
    try:
        yield
    finally:
        for m, k, value in saved:
            setattr(m, k, value)


@torch.no_grad()
def flops_by_module(model: nn.Module, img_size: int, in_chans: int = 3) -> dict[str, int]:
    """fvcore FLOPs (multiply-adds) per submodule name at batch 1; '' is the whole model."""
    p = next(model.parameters())
    x = torch.zeros(1, in_chans, img_size, img_size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    with unfused_attention(model):
        analysis = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        counts = dict(analysis.by_module())
    model.train(was_training)
    return counts


def flops_official(model: nn.Module) -> dict | None:
    """The analytic count of the official Swin code (microsoft/Swin-Transformer, `SwinTransformer.flops()`).

    Written from the Swin paper's complexity expressions, one multiply-add = one FLOP, at the model's own
    resolution; None for a model that is not a timm SwinTransformer. Per block of C channels on h x w tokens
    with windows of M tokens: W-MSA = 4hwC^2 (qkv 3hwC^2 + proj hwC^2) + 2(hw)MC (the two attention matmuls),
    MLP = 2hw C x hidden, two LayerNorms hwC each; patch merging = hwC (norm) + (hw/4) 4C x 2C; patch embedding
    and its norm; final norm; head. Unlike fvcore it counts no bias, softmax, GELU or pooling, and it keeps the
    official code's final-norm term, num_features x patch tokens // 2**num_stages (four times the tokens the
    last stage really has), so that it is the number the paper rounds.
    Returns {"total": FLOPs, "layers": {prunable weight name: FLOPs}} (each linear layer = tokens x in x out,
    which is fvcore's count of the same layer).
    """
    from timm.models.swin_transformer import SwinTransformer
    if not isinstance(model, SwinTransformer):
        return None
    pe = model.patch_embed
    (ho, wo), (ph, pw) = pe.grid_size, pe.patch_size
    total = ho * wo * pe.proj.out_channels * pe.proj.in_channels * ph * pw
    total += ho * wo * pe.proj.out_channels if not isinstance(pe.norm, nn.Identity) else 0
    layers = {}
    for i, stage in enumerate(model.layers):
        if hasattr(stage.downsample, "reduction"):  # timm merges at the start of a stage, official at the end
            h, w = stage.input_resolution
            red = stage.downsample.reduction
            total += h * w * (red.in_features // 4) + (h // 2) * (w // 2) * red.in_features * red.out_features
        for j, blk in enumerate(stage.blocks):
            h, w = blk.input_resolution
            tokens, window, c = h * w, blk.window_size[0] * blk.window_size[1], blk.attn.qkv.in_features
            prefix = f"layers.{i}.blocks.{j}."
            for name, lin in (("attn.qkv", blk.attn.qkv), ("attn.proj", blk.attn.proj), ("mlp.fc1", blk.mlp.fc1),
                              ("mlp.fc2", blk.mlp.fc2)):
                layers[prefix + name + ".weight"] = tokens * lin.in_features * lin.out_features
            total += 2 * tokens * window * c + 2 * tokens * c  # q @ k^T, attn @ v; norm1, norm2
    total += sum(layers.values())
    total += model.num_features * ho * wo // 2 ** len(model.layers)  # the official code's final-norm term
    head = model.head.fc  # timm's ClassifierHead; an Identity when num_classes=0
    total += head.in_features * head.out_features if isinstance(head, nn.Linear) else 0
    return {"total": total, "layers": layers}


def _official_columns(model: nn.Module, masks: dict, ratio: float) -> dict:
    """flops_official_dense, and the paper's convention (dense - r x prunable linear FLOPs) on that count."""
    official = flops_official(model)
    if official is None or any(n not in official["layers"] for n in masks):
        return {"flops_official_dense": None, "flops_official_paper": None,
                "flops_official_paper_reduction_pct": None}
    dense = official["total"]
    paper = dense - ratio * sum(official["layers"][n] for n in masks)
    return {"flops_official_dense": dense, "flops_official_paper": paper,
            "flops_official_paper_reduction_pct": _pct(dense - paper, dense)}


def _pct(removed: float, total: float) -> float:
    return 100.0 * removed / total if total else 0.0


def nm_columns(layers: list[dict], params_total: int, flops_dense: int, nm: tuple[int, int]) -> dict:
    """The N:M kernel's FLOPs and the compressed 16-bit weight size (module docstring), from `account`'s layers."""
    n, m = nm
    nm_layers = [l for l in layers if l["kind"] == f"{n}:{m}"]
    executed = flops_dense - sum(l["flops"] * (m - n) / m for l in nm_layers)
    numel = sum(l["weights"] for l in nm_layers)
    compressed = sum(l["weights"] * n // m * 2 + math.ceil(l["weights"] * n // m * math.ceil(math.log2(m)) / 8)
                     for l in nm_layers)
    dense_bytes = 2 * params_total
    return {"pattern": f"{n}:{m}", "nm_layers": len(nm_layers), "dense_layers": len(layers) - len(nm_layers),
            "flops_nm_kernel": executed, "flops_nm_kernel_reduction_pct": _pct(flops_dense - executed, flops_dense),
            "weight_bytes_16bit_dense": dense_bytes, "weight_bytes_16bit_nm": dense_bytes - 2 * numel + compressed,
            "weight_bytes_16bit_nm_pct": 100.0 * (dense_bytes - 2 * numel + compressed) / dense_bytes}


def account(model: nn.Module, masks: dict[str, torch.Tensor], img_size: int, in_chans: int = 3,
            flops: dict[str, int] | None = None, pattern: tuple[int, int] | None = None) -> dict:
    """Every accounting figure of a pruned model, with per-module and per-layer breakdowns.

    `masks` covers the prunable weights (True = kept); `flops` may be passed in to avoid re-tracing. With an N:M
    `pattern` (N, M) each layer is classified dense / N:M / other and the N:M columns are added.
    """
    flops = flops if flops is not None else flops_by_module(model, img_size, in_chans)
    params_total = sum(p.numel() for p in model.parameters())
    layers, modules = [], {m: {"weights": 0, "kept": 0, "flops": 0} for m in PRUNABLE_MODULES}
    module_of = module_map(model)
    for name, mask in masks.items():
        module = module_of[name]
        numel, kept = mask.numel(), int(mask.sum())
        layer_flops = int(flops[name.removesuffix(".weight")])
        layers.append({"name": name, "module": module, "weights": numel, "kept": kept,
                       "kept_fraction": kept / numel, "flops": layer_flops,
                       **({"kind": layer_kind(mask, *pattern)} if pattern else {})})
        modules[module]["weights"] += numel
        modules[module]["kept"] += kept
        modules[module]["flops"] += layer_flops
    for m in modules.values():
        m["kept_fraction"] = m["kept"] / m["weights"] if m["weights"] else 1.0

    prunable = sum(m["weights"] for m in modules.values())
    removed = prunable - sum(m["kept"] for m in modules.values())
    ratio = removed / prunable if prunable else 0.0
    flops_dense = int(flops[""])
    flops_prunable = sum(m["flops"] for m in modules.values())
    flops_paper = flops_dense - ratio * flops_prunable
    flops_sparse = flops_dense - sum(l["flops"] * (1 - l["kept_fraction"]) for l in layers)
    params_nonzero = params_total - removed
    return {
        "params_total": params_total,
        "params_nonzero": params_nonzero,
        "params_reduction_pct": _pct(removed, params_total),
        "prunable_weights": prunable,
        "prunable_removed": removed,
        "prunable_removed_fraction": ratio,
        "flops_dense": flops_dense,
        "flops_prunable": flops_prunable,
        "flops_paper": flops_paper,
        "flops_paper_reduction_pct": _pct(flops_dense - flops_paper, flops_dense),
        "flops_sparse": flops_sparse,
        "flops_sparse_reduction_pct": _pct(flops_dense - flops_sparse, flops_dense),
        **_official_columns(model, masks, ratio),
        **(nm_columns(layers, params_total, flops_dense, pattern) if pattern else {}),
        "modules": modules,
        "layers": layers,
    }
