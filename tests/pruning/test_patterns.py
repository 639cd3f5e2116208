"""N:M masks and their allocation (dimap.pruning.patterns), checked against independent computations."""
import itertools

import numpy as np
import pytest
import torch

from dimap import UserError, compute_masks, prunable_weights
from dimap.pruning import reference
from dimap.pruning.modules import modules_of
from dimap.pruning.patterns import (eligible, first_cover, layer_kind, min_cost_cover, nm_masks, parse_pattern,
                                    pattern_masks)
from dimap.pruning.removal_count import n_removed
from tests.conftest import make_tiny_swin


def largest_of_groups(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Independent reference: in each group of m along the input keep the n largest |w|; numpy's lexsort orders
    a group by (|w|, index), so among equal |w| the lower index comes first and is removed first."""
    a = np.abs(w.detach().double().numpy()).reshape(w.shape[0], -1, m)
    idx = np.broadcast_to(np.arange(m), a.shape)
    order = np.lexsort((idx, a), axis=-1)
    keep = np.ones(a.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :m - n], False, axis=-1)
    return torch.from_numpy(keep.reshape(w.shape))


def with_ties(model):
    """Plant exact ties: a quarter of every prunable weight's entries set to one value."""
    with torch.no_grad():
        for w in prunable_weights(model).values():
            w.view(-1)[::4] = 0.01
            w.view(-1)[1::8] = 0.01
    return model


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
@pytest.mark.parametrize("method", ["dimap", "uniform", "global_magnitude", "single_module"])
def test_every_layer_n_of_m_at_the_largest_ratio_equals_the_n_largest_of_each_group(method, pattern):
    n, m = parse_pattern(pattern)
    model = with_ties(make_tiny_swin())
    masks = compute_masks(model, method, (m - n) / m, pattern=pattern)
    weights = prunable_weights(model)
    for name, w in weights.items():
        assert torch.equal(masks[name], largest_of_groups(w, n, m)), name
        assert int(masks[name].sum()) == w.numel() * n // m


def test_ties_remove_the_lower_index_first():
    score = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5, 0.1, 0.1, 0.3]])
    assert nm_masks(score, 2, 4).tolist() == [[False, False, True, True, True, False, False, True]]
    assert nm_masks(score, 1, 4).tolist() == [[False, False, False, True, True, False, False, False]]


def test_pattern_parsing_and_its_refusals():
    assert parse_pattern("unstructured") is None and parse_pattern("2:4") == (2, 4) and parse_pattern("4:8") == (4, 8)
    for bad in ("4:2", "0:4", "2-4", "a:b", "2:4:8", 2):
        with pytest.raises(UserError, match="prune.pattern"):
            parse_pattern(bad)
    with pytest.raises(UserError, match="quote it"):
        parse_pattern(124)  # YAML 1.1 reads an unquoted 2:4 as sexagesimal 124


def test_a_ratio_above_what_n_of_m_removes_is_refused():
    with pytest.raises(UserError, match=r"more than 2:4 sparsity can remove \(at most 2/4 = 0.5\)"):
        compute_masks(make_tiny_swin(), "dimap", 0.6, pattern="2:4")
    with pytest.raises(UserError, match="prune.module_ratios.MLP-M=0.8"):
        compute_masks(make_tiny_swin(), "dimap", 0.3, module_ratios={"MLP-M": 0.8}, pattern="2:4")
    compute_masks(make_tiny_swin(), "dimap", 0.75, pattern="1:4")  # 1:4 reaches 0.75


def test_layers_whose_input_is_not_a_multiple_of_m_stay_dense():
    rank = {"a": torch.rand(4, 8), "b": torch.rand(4, 6)}
    masks, record = pattern_masks(rank, {"a": "MLP-M", "b": "MLP-M"}, 2, 4, 0.5)
    assert layer_kind(masks["a"], 2, 4) == "2:4" and bool(masks["b"].all())
    assert record["ineligible_layers"] == ["b"] and record["nm_layers"] == ["a"] and not eligible((4, 6), 4)


def brute_force_cover(units, costs, target):
    """The cheapest subset reaching target, by trying every subset (all of them when none reaches it)."""
    best = None
    for pick in itertools.product([False, True], repeat=len(units)):
        if sum(u for u, p in zip(units, pick) if p) < target:
            continue
        c = sum(c for c, p in zip(costs, pick) if p)
        if best is None or c < best[0] - 1e-12:
            best = (c, list(pick))
    return best[1] if best else [True] * len(units)


def test_min_cost_cover_equals_brute_force_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 9))
        units = [int(u) * 6 for u in rng.integers(1, 12, k)]
        costs = [float(c) for c in rng.random(k)]
        target = int(rng.integers(0, sum(units) + 7))
        got = min_cost_cover(units, costs, target)
        want = brute_force_cover(units, costs, target)
        assert got == want, (units, costs, target)
        if target <= sum(units):
            assert sum(u for u, p in zip(units, got) if p) >= target


def test_first_cover_is_the_shortest_prefix_reaching_the_target():
    assert first_cover([4, 4, 8], 5) == [True, True, False]
    assert first_cover([4, 4, 8], 8) == [True, True, False]
    assert first_cover([4, 4, 8], 9) == [True, True, True]
    assert first_cover([4, 4, 8], 0) == [False, False, False]


def eq10_cost_of_two_four(w: torch.Tensor) -> float:
    """Total Eq. 10 score (the argsort reference) of the weights a 2:4 mask of w removes."""
    keep = largest_of_groups(w, 2, 4)
    return float(reference.dimap_scores(w)[~keep].sum())


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.35, 0.45])
def test_module_allocation_is_the_cheapest_set_of_layers_reaching_each_modules_share(ratio):
    """Per module, by trying every subset of its layers: the 2:4 layers are the set that removes at least
    n_removed(module size, ratio) weights with the least total Eq. 10 score removed; every other layer is dense."""
    model = make_tiny_swin(embed_dim=16)
    weights = prunable_weights(model)
    masks = compute_masks(model, "dimap", ratio, pattern="2:4")
    for module, names in modules_of(weights).items():
        size = sum(weights[n].numel() for n in names)
        target = n_removed(size, ratio)
        units = [weights[n].numel() // 2 for n in names]
        want = brute_force_cover(units, [eq10_cost_of_two_four(weights[n]) for n in names], target)
        got = [layer_kind(masks[n], 2, 4) == "2:4" for n in names]
        assert got == want, module
        assert all(layer_kind(masks[n], 2, 4) in ("dense", "2:4") for n in names)
        removed = sum(int((~masks[n]).sum()) for n in names)
        assert removed >= target and removed == sum(u for u, p in zip(units, want) if p)


def test_global_allocation_ranks_all_layers_by_magnitude_loss_and_first_takes_the_earliest():
    model = make_tiny_swin(embed_dim=16, depths=[1, 1, 1, 1])  # 16 layers: 65,536 subsets
    weights = prunable_weights(model)
    names = list(weights)
    masks = compute_masks(model, "global_magnitude", 0.3, pattern="2:4")
    units = [weights[n].numel() // 2 for n in names]
    costs = [float(weights[n].detach().abs().double()[~largest_of_groups(weights[n], 2, 4)].sum()) for n in names]
    want = brute_force_cover(units, costs, n_removed(sum(w.numel() for w in weights.values()), 0.3))
    assert [layer_kind(masks[n], 2, 4) == "2:4" for n in names] == want
    first = compute_masks(model, "dimap", 0.3, pattern="2:4", allocation="first")
    for module, ns in modules_of(weights).items():
        target = n_removed(sum(weights[n].numel() for n in ns), 0.3)
        assert [layer_kind(first[n], 2, 4) == "2:4" for n in ns] == first_cover(
            [weights[n].numel() // 2 for n in ns], target), module


def test_module_shares_as_asked_every_layer_dense_or_two_four():
    model = make_tiny_swin(embed_dim=16)
    record = {}
    masks = compute_masks(model, "dimap", 0.25, pattern="2:4", record=record)
    weights = prunable_weights(model)
    for module, names in modules_of(weights).items():
        size = sum(weights[n].numel() for n in names)
        removed = sum(int((~masks[n]).sum()) for n in names)
        assert n_removed(size, 0.25) <= removed < size // 2  # at least the asked share, some layers dense
    assert set(record["nm_layers"]) | set(record["dense_layers"]) == set(weights)
    assert {layer_kind(m, 2, 4) for m in masks.values()} == {"dense", "2:4"}


def test_module_ratios_with_global_allocation_are_refused():
    with pytest.raises(UserError, match="prune.nm_allocation=module"):
        compute_masks(make_tiny_swin(), "dimap", 0.3, module_ratios={"MLP-M": 0.4}, pattern="2:4",
                      allocation="global")
    with pytest.raises(UserError, match="prune.nm_allocation='best' is unknown"):
        compute_masks(make_tiny_swin(), "dimap", 0.3, pattern="2:4", allocation="best")
