"""Importance scores. Each takes one weight tensor and returns a float tensor of the same shape."""
import torch


def dimap_scores(weight: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 10: Imp(w_(j)) = w_(j)^2 / sum_{i<=j} w_(i)^2, with weights sorted by magnitude, largest first.

    The denominator includes w_(j) itself, so the largest weight scores 1. Ties are ordered by index (stable
    sort): of two equal magnitudes the earlier one comes first and scores higher. Exact zeros score 0.
    The cumulative sum runs in float64 so that layers with millions of weights rank exactly.
    """
    flat = weight.detach().reshape(-1).to(torch.float64)
    order = torch.argsort(flat.abs(), descending=True, stable=True)
    sq = flat[order].square()
    cum = torch.cumsum(sq, 0)
    sorted_scores = torch.where(cum > 0, sq / cum.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    scores = torch.empty_like(sorted_scores)
    scores[order] = sorted_scores
    return scores.reshape(weight.shape)


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al., ICLR 2021): sort ascending, w_u^2 / sum_{v>=u} w_v^2. Equal to Eq. 10 for one layer
    whose magnitudes are distinct (ties are ordered the other way round here).

    Kept as an independent reference for tests; pruning uses `dimap_scores`.
    """
    flat = weight.detach().reshape(-1).to(torch.float64)
    order = torch.argsort(flat.abs(), descending=False, stable=True)
    sq = flat[order].square()
    tail = sq.flip(0).cumsum(0).flip(0)
    sorted_scores = torch.where(tail > 0, sq / tail.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    scores = torch.empty_like(sorted_scores)
    scores[order] = sorted_scores
    return scores.reshape(weight.shape)


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|w|: the score of layer-wise and global magnitude pruning."""
    return weight.detach().abs().to(torch.float64)
