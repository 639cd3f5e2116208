"""N:M sparsity (docs/method.md, "N:M sparsity and its module-aware allocation"), generic over a per-weight score.

A layer is N:M when every group of M consecutive weights along its INPUT dimension (the last dimension of a
Linear weight, the layout of the GPU's 2:4 kernels) keeps exactly N. A layer whose input size is not a multiple
of M cannot be N:M and stays dense. Below a ratio of (M-N)/M not every layer can be N:M: `allocate` picks which
layers become N:M and the rest stay dense, so every layer ends either dense or exactly N:M.

The one entry point for any criterion that scores single weights (Eq. 10, magnitude, or a data-aware score):

    pattern_masks(rank, module, n, m, ratio, allocation="module", cost=None) -> (masks, record)

`rank` {name: score tensor}: inside a group of M the N highest-ranked weights stay (ties: the lower index is
removed first, the project's convention). `cost` {name: score tensor} (default: `rank`) prices a layer's N:M
loss for the allocation: the sum of the costs of the weights N:M removes. Both may be lazy mappings (a tensor
is asked for once per layer, so a model never holds every layer's scores at once).
"""
import math
from collections.abc import Mapping

import numpy as np
import torch

from dimap.errors import UserError
from dimap.pruning.removal_count import n_removed

UNSTRUCTURED = "unstructured"
ALLOCATIONS = ("module", "global", "first")


def parse_pattern(pattern) -> tuple[int, int] | None:
    """prune.pattern as (N, M), or None for "unstructured"."""
    if pattern is None or pattern == UNSTRUCTURED:
        return None
    text = str(pattern)
    parts = text.split(":")
    if isinstance(pattern, str) and len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return n, m
    hint = " (YAML reads an unquoted 2:4 as the number 124: quote it, pattern: \"2:4\")" if isinstance(pattern, int) else ""
    raise UserError(f"prune.pattern={pattern!r} is not a pattern{hint}: pass prune.pattern=unstructured or N:M with "
                    "0 < N < M, e.g. prune.pattern=2:4")


def max_ratio(n: int, m: int) -> float:
    """The largest share N:M can remove: (M-N)/M, every layer N:M."""
    return (m - n) / m


def check_nm_ratio(shares: Mapping[str, float], n: int, m: int) -> None:
    """Refuse a share N:M cannot reach, in one sentence."""
    for where, share in shares.items():
        if share > max_ratio(n, m) + 1e-12:
            raise UserError(f"{where}={share:g} is more than {n}:{m} sparsity can remove (at most {m - n}/{m} = "
                            f"{max_ratio(n, m):g}): lower it or use prune.pattern=unstructured")


def eligible(shape, m: int) -> bool:
    """Can a weight of this shape be N:M? (2-D, input size a multiple of M)."""
    return len(shape) == 2 and shape[-1] % m == 0


def nm_masks(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask keeping the N highest scores of every M consecutive weights along the last dimension.

    Ties: the lower index is removed first (a stable ascending sort puts it first among equals, and the first
    M-N of each group are removed). The input size must be a multiple of M (see `eligible`).
    """
    out, inp = score.shape
    groups = score.detach().reshape(out, inp // m, m)
    if groups.dtype in (torch.float16, torch.bfloat16):
        groups = groups.float()
    order = torch.argsort(groups, dim=-1, stable=True)  # ascending; among equal scores the lower index first
    keep = torch.ones(groups.shape, dtype=torch.bool, device=score.device)
    keep.scatter_(-1, order[..., :m - n], False)
    return keep.reshape(out, inp)


def layer_kind(mask: torch.Tensor, n: int, m: int) -> str:
    """"dense", "N:M" (exactly N kept in every group of M along the input) or "other"."""
    if bool(mask.all()):
        return "dense"
    if eligible(mask.shape, m) and bool((mask.reshape(mask.shape[0], -1, m).sum(-1) == n).all()):
        return f"{n}:{m}"
    return "other"


def min_cost_cover(units: list[int], costs: list[float], target: int) -> list[bool]:
    """The subset of items whose units sum to at least `target` with the least total cost (0/1 covering
    knapsack, exact: dynamic programming over multiples of the units' gcd). All items when they cannot reach
    `target`; none when target <= 0. Of equally cheap subsets, the one the items' order reaches first (an item
    is taken only if strictly cheaper), so the answer is deterministic."""
    if target <= 0 or not units:
        return [False] * len(units)
    if sum(units) < target:
        return [True] * len(units)
    g = math.gcd(*units)
    cap = -(-target // g)
    dp = np.full(cap + 1, np.inf)
    dp[0] = 0.0
    idx = np.arange(cap + 1)
    taken = []
    for u, c in zip(units, costs):
        cand = dp[np.maximum(idx - u // g, 0)] + c
        take = cand < dp
        dp = np.where(take, cand, dp)
        taken.append(take)
    chosen, j = [False] * len(units), cap
    for i in range(len(units) - 1, -1, -1):
        if taken[i][j]:
            chosen[i] = True
            j = max(j - units[i] // g, 0)
    return chosen


def first_cover(units: list[int], target: int) -> list[bool]:
    """The shortest prefix of the items (network order) whose units sum to at least `target`."""
    chosen, total = [], 0
    for u in units:
        chosen.append(total < target)
        total += u if chosen[-1] else 0
    return chosen


def pattern_masks(rank: Mapping[str, torch.Tensor], module: Mapping[str, str], n: int, m: int, ratio,
                  allocation: str = "module", cost: Mapping[str, torch.Tensor] | None = None):
    """Masks in which every layer is dense or exactly N:M, removing about `ratio` of each group.

    `rank`, `cost`: see the module docstring; `module` {name: QKV-M | PRJ-M | MLP-M}, in network order.
    `ratio`: a share, or {module: share}. `allocation`: "module" (each module removes its own share; of the sets
    of N:M layers removing at least that share, the one whose removed weights have the least total cost),
    "global" (the same over all layers at once, one share) or "first" (in each module the earliest layers, the
    shortest prefix removing at least the share). Asked share -> achieved share: at least the asked count
    n_removed(size, share) whenever the eligible layers can reach it, else every eligible layer is N:M.
    Returns (masks, record): record = {pattern, allocation, nm_layers, dense_layers, ineligible_layers}.
    """
    if allocation not in ALLOCATIONS:
        raise UserError(f"prune.nm_allocation={allocation!r} is unknown: use one of auto, {', '.join(ALLOCATIONS)}")
    names = list(module)
    shape = {nm: tuple(rank[nm].shape) for nm in names}
    if allocation == "global":
        if isinstance(ratio, dict):
            raise UserError("prune.module_ratios does not apply to prune.nm_allocation=global, which ranks every layer "
                            "together: drop prune.module_ratios or use prune.nm_allocation=module")
        groups = {"all": names}
    else:
        groups = {}
        for nm in names:
            groups.setdefault(module[nm], []).append(nm)
    masks, chosen_all = {}, set()
    for key, members in groups.items():
        share = ratio[key] if isinstance(ratio, dict) else ratio
        target = n_removed(sum(math.prod(shape[nm]) for nm in members), share)
        ok = [nm for nm in members if eligible(shape[nm], m)]
        units = [math.prod(shape[nm]) // m * (m - n) for nm in ok]
        if allocation == "first" or target <= 0 or sum(units) <= target:
            pick = first_cover(units, target)
        else:
            layer_masks, costs = {}, []
            for nm in ok:
                layer_masks[nm] = nm_masks(rank[nm], n, m)
                c = (cost if cost is not None else rank)[nm]
                costs.append(float(c.detach().reshape(layer_masks[nm].shape)[~layer_masks[nm]].double().sum()))
            pick = min_cost_cover(units, costs, target)
            masks.update({nm: layer_masks[nm] for nm, p in zip(ok, pick) if p})
        chosen_all.update(nm for nm, p in zip(ok, pick) if p)
    for nm in names:
        if nm not in masks:
            masks[nm] = nm_masks(rank[nm], n, m) if nm in chosen_all else \
                torch.ones(shape[nm], dtype=torch.bool, device=rank[nm].device)
    record = {"pattern": f"{n}:{m}", "allocation": allocation,
              "nm_layers": [nm for nm in names if nm in chosen_all],
              "dense_layers": [nm for nm in names if nm not in chosen_all],
              "ineligible_layers": [nm for nm in names if not eligible(shape[nm], m)]}
    return {nm: masks[nm] for nm in names}, record
