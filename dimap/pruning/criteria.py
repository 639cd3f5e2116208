"""Pruning criteria (docs/method.md, sections 3 and 4), side by side with one signature:

    criterion(weights: dict[name, Tensor], ratio: float | dict[module, float]) -> dict[name, BoolTensor]  (True = kept)

`weights` are the prunable matrices (see `dimap.pruning.modules.prunable_weights`). A criterion decides which scores
are compared with which (one group per module, one group for everything, one per layer); each group then loses
exactly n_removed(group size, ratio) of its lowest-scoring weights. `ratio` may also give one share per module
({"QKV-M": 0.5, "PRJ-M": 0.4, "MLP-M": 0.6}; prune.module_ratios): dimap then removes each module's own share
under its own threshold, uniform removes from every layer its module's share, and the one-group criteria
(single_module, global_magnitude), which rank all modules together, refuse it. Ties go by position: earlier layer, then
lower flat index, removed first. Adding a criterion is adding one function here, one line in CRITERIA and one
file in conf/prune/. Criteria that also need calibration images (Wanda, SparseGPT: docs/baselines.md) take the
model and the images too; they live in their own files and are listed in `dimap.pruning.masks.DATA_AWARE`.

The masks are bit for bit those of the straightforward implementation in `dimap.pruning.reference` (argsort every
score of a group), computed without sorting a group or scattering scores back to positions:
- Eq. 10 criteria sort each layer's magnitudes once (values only) and take the scores in that order. Scores
  are monotone in |w| within a layer, so the group's cut-off score is found by searching the sorted arrays,
  and a layer's mask is one comparison of |w| with the magnitude at its cut-off position.
- magnitude criteria sort nothing: the cut-off is a k-th smallest value (linear-time selection).
On CPU the arrays are numpy's (SIMD sort, partition and searchsorted); elsewhere torch's.
"""
import math

import numpy as np
import torch

from dimap.errors import UserError
from dimap.pruning.modules import modules_of
from dimap.pruning.removal_count import n_removed
from dimap.pruning.scores import dimap_scores, magnitude_scores, on_numpy, sorted_dimap_scores, sorted_magnitudes

__all__ = ["CRITERIA", "masks_for_ratio", "per_row_masks", "n_removed", "dimap", "single_module", "uniform",
           "global_magnitude",
           "dimap_scores", "magnitude_scores"]


# ---- arrays: numpy on CPU, torch elsewhere ----------------------------------------------------------------

def _array(t: torch.Tensor, magnitude: bool = False):
    """A flat array of t (of |t| with `magnitude`, in float32, or float64 for float64 weights: exact)."""
    t = t.detach().reshape(-1)
    if t.dtype in (torch.float16, torch.bfloat16) or magnitude and t.dtype != torch.float64:
        t = t.to(torch.float32)
    if on_numpy(t):
        return np.abs(t.numpy()) if magnitude else t.numpy()
    return t.abs() if magnitude else t


def _tensor(mask, like: torch.Tensor) -> torch.Tensor:
    return (torch.from_numpy(mask) if isinstance(mask, np.ndarray) else mask).reshape(like.shape)


def _searchsorted(a, v, right: bool):
    if isinstance(a, np.ndarray):
        return np.searchsorted(a, v, side="right" if right else "left")
    return torch.searchsorted(a, v, right=right)


def _count(mask) -> int:
    return int(np.count_nonzero(mask)) if isinstance(mask, np.ndarray) else int(mask.sum().item())


def _first_true(mask, m: int):
    """Flat indices of the first m True entries of mask (few in practice: a nonzero beats a cumsum)."""
    return np.flatnonzero(mask)[:m] if isinstance(mask, np.ndarray) else mask.nonzero()[:m, 0]


def _full(a, value: bool):
    return np.full(a.shape, value) if isinstance(a, np.ndarray) else torch.full_like(a, value, dtype=torch.bool)


def _quotas(n_tied: list[int], m: int) -> list[int]:
    """Split the m tied weights to remove over the layers of a group, earlier layers first."""
    out = []
    for e in n_tied:
        out.append(min(m, e))
        m -= out[-1]
    return out


def _split_ties(above, tied, m: int):
    """Keep `above`, and the `tied` weights after the first m by flat index (those m are removed)."""
    keep = above | tied
    keep[_first_true(tied, m)] = False
    return keep


# ---- groups of unsorted scores: a k-th smallest value, then comparisons ---------------------------------

def _lowest_removed(flats: list, ratio: float) -> list:
    """Keep-masks (flat arrays) of one group: exactly n_removed of the lowest values go, ties by position."""
    k = n_removed(sum(len(f) for f in flats), ratio)
    if k == 0:
        return [_full(f, True) for f in flats]
    if isinstance(flats[0], np.ndarray):
        t = np.partition(flats[0] if len(flats) == 1 else np.concatenate(flats), k - 1)[k - 1]
    else:
        t = torch.kthvalue(torch.cat(flats), k).values
    below = [_count(f < t) for f in flats]
    tied = [_count(f == t) for f in flats]
    return [f >= t if m == 0 else f > t if m == e else _split_ties(f > t, f == t, m)
            for f, e, m in zip(flats, tied, _quotas(tied, k - sum(below)))]


def masks_for_ratio(scores: dict[str, torch.Tensor], groups: list[list[str]], ratio: float) -> dict[str, torch.Tensor]:
    """In each group, remove exactly n_removed(group size, ratio) weights with the lowest scores.

    Scores of a group are ranked together; ties go by position (earlier layer, then lower flat index, removed
    first), so masks are deterministic.
    """
    masks = {}
    for names in groups:
        keep = _lowest_removed([_array(scores[n]) for n in names], ratio)
        masks.update({n: _tensor(m, scores[n]) for n, m in zip(names, keep)})
    return masks


def per_row_masks(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Each output row of a (rows, columns) score matrix loses exactly n_removed(columns, ratio) of its
    lowest-scoring entries (Wanda's comparison group); ties go by column, the lower index removed first."""
    k = n_removed(score.shape[1], ratio)
    keep = torch.ones(score.shape, dtype=torch.bool, device=score.device)
    if k:
        keep.scatter_(1, torch.argsort(score, dim=1, stable=True)[:, :k], False)
    return keep


def _magnitude_masks(weights: dict[str, torch.Tensor], groups: list[list[str]], ratio: float):
    """`masks_for_ratio` with |w| as the score, without materialising float64 `magnitude_scores`."""
    masks = {}
    for names in groups:
        keep = _lowest_removed([_array(weights[n], magnitude=True) for n in names], ratio)
        masks.update({n: _tensor(m, weights[n]) for n, m in zip(names, keep)})
    return masks


# ---- groups of layers sorted by magnitude (Eq. 10): search the sorted scores ----------------------------

def _kth_of_sorted(arrays: list, k: int):
    """The k-th smallest value (1-based) of the union of ascending, non-negative float arrays.

    For non-negative floats the order of the values is the order of their bit patterns as integers, so the
    answer is found by narrowing an integer interval: each round counts, with one searchsorted per layer,
    how many values lie at or below `fan` evenly spaced candidates (7 to 11 rounds for float64).
    """
    if len(arrays) == 1:
        return arrays[0][k - 1:k]
    numpy = isinstance(arrays[0], np.ndarray)
    fan = 1024 if numpy else 64  # numpy's searchsorted is cheap for sorted queries; torch's pays per query
    dtype = arrays[0].dtype
    ints = {np.dtype(np.float64): np.int64, np.dtype(np.float32): np.int32} if numpy else \
        {torch.float64: torch.int64, torch.float32: torch.int32}
    ints = ints[dtype]

    def as_floats(bits):
        if numpy:
            return np.array(bits, dtype=ints).view(dtype)
        return torch.tensor(bits, dtype=ints, device=arrays[0].device).view(dtype)

    lo, hi = 0, max(int(a[-1:].view(ints)[0]) for a in arrays if len(a))
    while lo < hi:  # invariant: the answer's bits lie in [lo, hi]
        cands = sorted({lo + (hi - lo) * i // fan for i in range(1, fan + 1)})
        at_or_below = sum(_searchsorted(a, as_floats(cands), right=True) for a in arrays)
        i = int((at_or_below < k).sum())  # the first candidate with at least k values at or below it
        lo, hi = (cands[i - 1] + 1 if i else lo), cands[i]
    return as_floats([hi])


def _first_in_order(absw, ascending, x: int):
    """Mask of the x weights that come first in the stable descending order of |w| (ties: lower index first)."""
    n = len(ascending)
    if x == 0 or x == n:
        return _full(absw, x == n)
    last_in, first_out = ascending[n - x], ascending[n - x - 1]
    if last_in > first_out:
        return absw > first_out
    above = n - int(_searchsorted(ascending, ascending[n - x:n - x + 1], right=True)[0])
    keep = absw > last_in
    keep[_first_true(absw == last_in, x - above)] = True
    return keep


def _eq10_masks(weights: dict[str, torch.Tensor], groups: list[list[str]], ratio: float) -> dict[str, torch.Tensor]:
    """`masks_for_ratio` with Eq. 10 scores, from each layer's sorted magnitudes.

    Sorted position j of a layer (descending |w|, stable) has score sorted_scores[n - 1 - j], nonincreasing in
    j. The cut-off score t splits each layer into the positions [0, n - below - tied) scoring above t, the
    `tied` ones scoring exactly t, and the `below` ones under it. Both "above" and "above or tied" are
    prefixes of the sorted order, which `_first_in_order` turns into a mask by comparing |w| with one value.
    """
    masks = {}
    for names in groups:
        ascending = [sorted_magnitudes(_array(weights[n])) for n in names]
        if any(len(a) and not math.isfinite(float(a[-1])) for a in ascending):  # inf/nan: the oracle decides
            from dimap.pruning import reference
            scores = {n: reference.dimap_scores(weights[n]) for n in names}
            masks.update(reference.masks_for_ratio(scores, [names], ratio))
            continue
        scores = [sorted_dimap_scores(a) for a in ascending]
        k = n_removed(sum(len(a) for a in ascending), ratio)
        if k == 0:
            masks.update({n: torch.ones_like(weights[n], dtype=torch.bool) for n in names})
            continue
        t = _kth_of_sorted(scores, k)
        below = [int(_searchsorted(s, t, right=False)[0]) for s in scores]
        tied = [int(_searchsorted(s, t, right=True)[0]) - b for s, b in zip(scores, below)]
        del scores
        for n, a, b, e, m in zip(names, ascending, below, tied, _quotas(tied, k - sum(below))):
            absw, size = _array(weights[n], magnitude=True), len(a)
            if m in (0, e):
                keep = _first_in_order(absw, a, size - b - m)
            else:  # the group's tie is split inside this layer: remove its m tied weights of lowest index
                above = _first_in_order(absw, a, size - b - e)
                keep = _split_ties(above, _first_in_order(absw, a, size - b) & ~above, m)
            masks[n] = _tensor(keep, weights[n])
    return masks


def _share(ratio, module: str) -> float:
    """The share removed from `module`: `ratio` itself, or its entry for that module."""
    return ratio[module] if isinstance(ratio, dict) else ratio


def _one_share(ratio, criterion: str) -> float:
    if isinstance(ratio, dict):
        raise UserError(f"prune.module_ratios does not apply to {criterion}, which ranks every prunable weight under "
                        "one threshold: drop prune.module_ratios or use prune=dimap (or uniform)")
    return ratio


def dimap(weights, ratio):
    """DIMAP: Eq. 10 scores, one threshold per module (QKV-M, PRJ-M, MLP-M), removing r of each module (the
    same r in each unless `ratio` gives one per module: the paper does not say how it split its target)."""
    masks = {}
    for module, names in modules_of(weights).items():
        masks.update(_eq10_masks(weights, [names], _share(ratio, module)))
    return masks


def single_module(weights, ratio):
    """Table 4 ablation: Eq. 10 scores, all prunable layers in one module with one threshold (global LAMP)."""
    return _eq10_masks(weights, [list(weights)], _one_share(ratio, "single_module"))


def uniform(weights, ratio):
    """Table 3 baseline: every prunable layer loses the same share, by magnitude (layer-wise L1); with one
    share per module, every layer loses its module's share."""
    masks = {}
    for name in weights:
        masks.update(_magnitude_masks(weights, [[name]], _share(ratio, weights.module[name])))
    return masks


def global_magnitude(weights, ratio):
    """One magnitude threshold over all prunable layers: the method the paper argues against."""
    return _magnitude_masks(weights, [list(weights)], _one_share(ratio, "global_magnitude"))


CRITERIA = {f.__name__: f for f in (dimap, single_module, uniform, global_magnitude)}
