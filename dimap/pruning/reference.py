"""The straightforward implementation of Eq. 10 and the four criteria: the test oracle for `dimap.pruning.criteria`.

Kept verbatim from the first version of the library so that the fast criteria can be checked bit for bit:
per layer a stable descending argsort in float64 and a sequential cumulative sum (Eq. 10), then per group a
stable ascending argsort of all scores, removing exactly `n_removed` of the lowest (ties: earlier layer, then
lower flat index, first). Slow (about a minute for Swin-B on 2 CPU cores); use it for tests, not for pruning.
"""
import torch

from dimap.pruning.removal_count import n_removed
from dimap.pruning.modules import modules_of
# The per-weight scores (one argsort per layer) are the straightforward form of Eq. 10 already.
from dimap.pruning.scores import dimap_scores, magnitude_scores


def masks_for_ratio(scores: dict[str, torch.Tensor], groups: list[list[str]], ratio: float) -> dict[str, torch.Tensor]:
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
    scores = {n: dimap_scores(w) for n, w in weights.items()}
    return masks_for_ratio(scores, list(modules_of(weights).values()), ratio)


def single_module(weights, ratio):
    scores = {n: dimap_scores(w) for n, w in weights.items()}
    return masks_for_ratio(scores, [list(weights)], ratio)


def uniform(weights, ratio):
    scores = {n: magnitude_scores(w) for n, w in weights.items()}
    return masks_for_ratio(scores, [[n] for n in weights], ratio)


def global_magnitude(weights, ratio):
    scores = {n: magnitude_scores(w) for n, w in weights.items()}
    return masks_for_ratio(scores, [list(weights)], ratio)


CRITERIA = {f.__name__: f for f in (dimap, single_module, uniform, global_magnitude)}
