"""Inspect a pruned checkpoint (e.g. the authors' DIMAP1/2/3 files): its masks, its sparsity, and how its masks
compare with those our criteria compute from the dense weights it was pruned from.

The authors' files are official Swin checkpoints (`{'model': state_dict}`, downsample at the end of a stage,
`head.` not `head.fc.`) with pruned weights stored as zeros. They load through timm's checkpoint filter like
any dense file, so the masks are read from the loaded model and keyed by timm parameter names.
"""
import time

import torch
from torch import nn

from dimap.errors import UserError
from dimap.pruning.masks import compute_masks, masks_from_state_dict
from dimap.models import build_model
from dimap.pruning.modules import PRUNABLE_MODULES, module_map


def checkpoint_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks of a model loaded from a pruned checkpoint: a prunable weight is pruned iff it is exactly zero."""
    return masks_from_state_dict(dict(model.named_parameters()), model)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Counts for the overlap of two masks of the same shape (True = kept)."""
    return {"bits": a.numel(), "same": int((a == b).sum()), "both_kept": int((a & b).sum()),
            "either_kept": int((a | b).sum()), "kept_a": int(a.sum()), "kept_b": int(b.sum())}


def _ratios(c: dict) -> dict:
    return {"iou_kept": c["both_kept"] / c["either_kept"] if c["either_kept"] else 1.0,
            "same_bits": c["same"] / c["bits"], "kept_fraction_checkpoint": c["kept_a"] / c["bits"],
            "kept_fraction_ours": c["kept_b"] / c["bits"]}


def compare_masks(checkpoint: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], module: dict[str, str]) -> dict:
    """How far two mask sets agree, overall, per module and per layer.

    iou_kept = |kept in both| / |kept in either| (1.0 = the same weights survive); same_bits = share of mask bits
    that are equal (pruned-pruned counts too); kept fractions of each side show a different split across modules.
    `module` is the models' module map (`dimap.pruning.modules.module_map`).
    """
    if set(checkpoint) != set(ours):
        missing = sorted(set(checkpoint) ^ set(ours))
        raise ValueError(f"the two mask sets name different weights, e.g. {missing[0]!r}")
    layers = {n: _overlap(checkpoint[n].bool(), ours[n].bool()) for n in checkpoint}
    totals = {m: dict.fromkeys(next(iter(layers.values())), 0) for m in ("all", *PRUNABLE_MODULES)}
    for name, c in layers.items():
        for key in ("all", module[name]):
            for k, v in c.items():
                totals[key][k] += v
    return {"overall": _ratios(totals["all"]),
            "modules": {m: _ratios(c) for m, c in totals.items() if m != "all" and c["bits"]},
            "layers": {n: _ratios(c) for n, c in layers.items()}}


def module_removed_shares(masks: dict[str, torch.Tensor], module: dict[str, str]) -> dict[str, float]:
    """The share of each module's prunable weights a mask set removes (1 - the module's kept fraction)."""
    totals = {}
    for name, m in masks.items():
        n, kept = totals.get(module[name], (0, 0))
        totals[module[name]] = (n + m.numel(), kept + int(m.sum()))
    return {mod: 1 - kept / n for mod, (n, kept) in totals.items()}


def inspect_checkpoint(model_cfg: dict, compare_dense: str | None = None, compare_method: str = "dimap"):
    """Load the pruned checkpoint `model_cfg['weights']` into `model_cfg`'s architecture and read its masks.

    With `compare_dense` (a dense checkpoint of the same architecture), also compute `compare_method`'s masks from
    those dense weights and compare the two mask sets twice: at the checkpoint's overall removed share (the same
    r in every module, our decision), and at each module's own measured share (`per_module_ratio`; criteria that
    rank per module or per layer only). The first mixes two questions, the split across modules and the score;
    the second holds the split fixed to the checkpoint's, so it isolates the score. Together with the
    checkpoint's per-module kept fractions they say whether the paper used the same ratio in every module.
    Returns (model, masks, comparison or None).
    """
    model = build_model(model_cfg).eval()
    masks = checkpoint_masks(model)
    if not compare_dense:
        return model, masks, None
    removed = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    shares = module_removed_shares(masks, module_map(model))
    try:
        dense = build_model({**model_cfg, "weights": str(compare_dense)}).eval()
    except UserError as e:  # the dense weights come from prune.compare_dense here, not from model.weights
        raise UserError(str(e).replace("model.weights=", "prune.compare_dense=")) from None
    ours = compute_masks(dense, compare_method, removed)
    comparison = {"dense_weights": str(compare_dense), "method": compare_method, "ratio": removed,
                  "checkpoint_module_removed": shares,
                  "checkpoint_module_kept_fraction": {m: 1 - v for m, v in shares.items()},
                  "module_share_spread": max(shares.values()) - min(shares.values()),
                  **compare_masks(masks, ours, module_map(model))}
    if compare_method in ("dimap", "uniform"):
        per_module = compute_masks(dense, compare_method, removed, module_ratios=shares)
        comparison["per_module_ratio"] = {"module_ratios": shares,
                                           **compare_masks(masks, per_module, module_map(model))}
    return model, masks, comparison


# A dense pretrained Swin has essentially no prunable weight that is exactly 0.0; a pruned file has a share r of them.
ALREADY_PRUNED = 0.01


def masks_for_run(model: nn.Module, method: str, ratio: float, module_ratios: dict | None = None,
                  pattern: str = "unstructured", allocation: str = "auto", calibration=None,
                  options: dict | None = None):
    """The masks a training or evaluation run applies to `model` (dense weights loaded), and what they are.

    At ratio 0 (and no module_ratios) or with method "none" nothing is pruned here: the masks are the weights'
    own zeros, as prune=none reads them, so an already pruned file (the authors' DIMAP checkpoints) is evaluated,
    or finetuned, as the pruned model it is, and recorded as method "none" with ratio = its measured removed share
    (0 for dense weights), never as "dimap, ratio 0". Otherwise `method`'s masks at `ratio` (data-aware methods:
    from `calibration`, with `options`; compute_masks).
    `pattern` "N:M" (and `allocation`): see `compute_masks`; the record then also holds `nm` (which layers are
    N:M, dense, ineligible; the ratio asked and achieved).
    Returns (masks, record) with record = {method, ratio, pattern, masks_from, weights_zero_share,
    weights_already_pruned, prune_time_s}.
    """
    zeros = checkpoint_masks(model)
    n = sum(m.numel() for m in zeros.values())
    zero_share = sum(int((~m).sum()) for m in zeros.values()) / n
    record = {"weights_zero_share": zero_share, "weights_already_pruned": zero_share >= ALREADY_PRUNED}
    if method == "none" or (ratio == 0 and not module_ratios):
        return zeros, {"method": "none", "ratio": zero_share, "pattern": "unstructured",
                       "masks_from": "zeros of model.weights", **record}
    nm = {}
    t0 = time.perf_counter()
    masks = compute_masks(model, method, ratio, module_ratios, pattern, allocation, record=nm,
                          calibration=calibration, options=options)
    record["prune_time_s"] = round(time.perf_counter() - t0, 3)
    achieved = sum(int((~m).sum()) for m in masks.values()) / n
    if nm:
        record["nm"] = dict(nm, ratio_asked=ratio, ratio_achieved=achieved)
    if module_ratios:  # the share removed over all modules, as measured
        ratio = achieved
    return masks, {"method": method, "ratio": ratio, "pattern": str(pattern), "masks_from": method,
                   "module_ratios": module_ratios, **record}
