"""Pruning criteria (spec sections 3 and 4), side by side with one signature:

    criterion(weights: dict[name, Tensor], ratio: float) -> dict[name, BoolTensor]   (True = kept)

`weights` are the prunable matrices (see `dimap.modules.prunable_weights`). A criterion decides which scores
are compared with which (one group per module, one group for everything, one per layer); `masks_for_ratio`
then removes the lowest-scoring share of each group. Adding a criterion is adding one function here, one line
in CRITERIA and one file in conf/prune/.
"""
import math

import torch

from dimap.modules import modules_of
from dimap.scores import dimap_scores, magnitude_scores


def n_removed(n: int, ratio: float) -> int:
    """Weights removed from a group of n at `ratio`: round half up, so counts are exact and documented."""
    return int(math.floor(ratio * n + 0.5))


def masks_for_ratio(scores: dict[str, torch.Tensor], groups: list[list[str]], ratio: float) -> dict[str, torch.Tensor]:
    """In each group, remove exactly n_removed(group size, ratio) weights with the lowest scores.

    Scores of a group are ranked together; ties go by position (earlier layer, then lower flat index, removed
    first), so masks are deterministic.
    """
    masks = {}
    for names in groups:
        flat = torch.cat([scores[n].reshape(-1) for n in names])
        k = n_removed(flat.numel(), ratio)
        keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        if k:
            keep[torch.argsort(flat, stable=True)[:k]] = False
        offset = 0
        for n in names:
            size = scores[n].numel()
            masks[n] = keep[offset:offset + size].reshape(scores[n].shape)
            offset += size
    return masks


def dimap(weights, ratio):
    """DIMAP: Eq. 10 scores, one threshold per module (QKV-M, PRJ-M, MLP-M), the same ratio in each."""
    scores = {n: dimap_scores(w) for n, w in weights.items()}
    return masks_for_ratio(scores, list(modules_of(weights).values()), ratio)


def single_module(weights, ratio):
    """Table 4 ablation: Eq. 10 scores, all prunable layers in one module with one threshold (global LAMP)."""
    scores = {n: dimap_scores(w) for n, w in weights.items()}
    return masks_for_ratio(scores, [list(weights)], ratio)


def uniform(weights, ratio):
    """Table 3 baseline: every prunable layer loses the same share, by magnitude (layer-wise L1)."""
    scores = {n: magnitude_scores(w) for n, w in weights.items()}
    return masks_for_ratio(scores, [[n] for n in weights], ratio)


def global_magnitude(weights, ratio):
    """One magnitude threshold over all prunable layers: the method the paper argues against."""
    scores = {n: magnitude_scores(w) for n, w in weights.items()}
    return masks_for_ratio(scores, [list(weights)], ratio)


CRITERIA = {f.__name__: f for f in (dimap, single_module, uniform, global_magnitude)}
