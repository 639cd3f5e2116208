"""Importance scores. Each takes one weight tensor and returns a float tensor of the same shape.

`sorted_magnitudes` and `sorted_dimap_scores` give the same numbers in sorted order, which is all the criteria
need (within a layer Eq. 10 is monotone in |w|, so ranks never have to be scattered back to positions).
"""
import numpy as np
import torch

# On CPU, numpy's SIMD sort is about 9x faster than torch.sort and its cumsum is the same sequential float64
# sum as torch's. Tests switch this off to run the device (torch-only) path on CPU.
USE_NUMPY_ON_CPU = True


def on_numpy(t: torch.Tensor) -> bool:
    return USE_NUMPY_ON_CPU and t.device.type == "cpu"


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


def sorted_magnitudes(weight):
    """|w| of one layer, flattened and sorted ascending: float32 (float64 for float64 weights), exact either way.

    Takes a tensor (a numpy array on CPU, where numpy's SIMD sort is the fast one) and returns the same kind.
    """
    if isinstance(weight, np.ndarray):
        a = np.abs(weight.reshape(-1))
        a.sort()
        return a
    a = weight.detach().reshape(-1)
    a = a.to(torch.float64 if a.dtype == torch.float64 else torch.float32)
    if on_numpy(a):
        return torch.from_numpy(sorted_magnitudes(a.numpy()))
    return torch.sort(a.abs()).values


def sorted_dimap_scores(ascending):
    """Eq. 10 for a layer given as `sorted_magnitudes`: score i belongs to ascending[i] (float64, nondecreasing).

    Bit for bit the numbers of `dimap_scores`: the same float64 squares, the same sequential cumulative sum from
    the largest weight down, the same division. Within a run of equal magnitudes the scores decrease from the
    lowest index to the highest, as in `dimap_scores`. Tensor or numpy array in, the same kind out.
    """
    tiny = torch.finfo(torch.float64).tiny
    if isinstance(ascending, torch.Tensor) and on_numpy(ascending):
        return torch.from_numpy(sorted_dimap_scores(ascending.numpy()))
    if isinstance(ascending, np.ndarray):
        sq = ascending.astype(np.float64)
        np.square(sq, out=sq)
        cum = np.cumsum(sq[::-1])[::-1]  # cum[i]: sum over ascending[i:], added largest first
        top = cum[-1] if cum.size else 0.0  # the largest square: every cumulative sum is at least this
        if top == 0:
            return np.zeros_like(sq)
        return np.divide(sq, np.maximum(cum, tiny) if top < tiny else cum, out=sq)
    sq = ascending.to(torch.float64).square()
    cum = torch.cumsum(sq.flip(0), 0).flip(0)
    return torch.where(cum > 0, sq / cum.clamp_min(tiny), 0.0)


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Wanda (Sun et al., 2023, Eq. 1): S_ij = |W_ij| * ||X_j||_2, where ||X_j||_2 is the L2 norm of input
    feature j over every token of the calibration images (`input_norm`, one value per column of W). float64."""
    return weight.detach().abs().to(torch.float64) * input_norm.to(device=weight.device, dtype=torch.float64)[None, :]
