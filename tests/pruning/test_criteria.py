"""The four criteria against independent implementations: torch.nn.utils.prune and numpy thresholds."""
import numpy as np
import pytest
import torch
from torch.nn.utils import prune as torch_prune

from dimap import compute_masks, prunable_weights
from dimap.pruning.criteria import n_removed
from dimap.pruning.modules import MLP, PRJ, QKV, module_map, modules_of
from tests.conftest import make_tiny_swin

RATIOS = [0.0, 0.15, 0.55, 0.9]


def removed_lowest(scores: list[np.ndarray], ratio: float) -> list[np.ndarray]:
    """Independent oracle: remove everything at or below the k-th smallest score (scores are distinct)."""
    flat = np.concatenate([s.reshape(-1) for s in scores])
    k = n_removed(flat.size, ratio)
    cut = np.partition(flat, k - 1)[k - 1] if k else -np.inf
    return [s > cut for s in scores]


def eq10_numpy(w):
    a = np.abs(w.reshape(-1).astype(np.float64))
    order = np.argsort(-a, kind="stable")
    s = np.empty_like(a)
    s[order] = a[order] ** 2 / np.cumsum(a[order] ** 2)
    return s.reshape(w.shape)


@pytest.fixture(scope="module")
def model():
    return make_tiny_swin(seed=7)


def test_module_map_matches_spec(model):
    names = [n for n, _ in model.named_parameters()]
    modules = module_map(model)
    assert modules["layers.2.blocks.1.attn.qkv.weight"] == QKV
    assert modules["layers.0.blocks.0.mlp.fc2.weight"] == MLP
    for n in ("layers.0.blocks.0.attn.qkv.bias", "layers.1.downsample.reduction.weight", "head.fc.weight",
              "patch_embed.proj.weight", "layers.0.blocks.0.attn.relative_position_bias_table", "norm.weight",
              "layers.0.blocks.0.norm1.weight"):
        assert n in names and n not in modules
    groups = modules_of(prunable_weights(model))
    blocks = 1 + 1 + 2 + 1
    assert [len(groups[QKV]), len(groups[PRJ]), len(groups[MLP])] == [blocks, blocks, 2 * blocks]
    assert list(prunable_weights(model)) == [n for n in names if n in modules]


def test_no_prunable_layers_is_a_user_error():
    from dimap import UserError
    with pytest.raises(UserError, match="no attention and MLP blocks"):
        compute_masks(torch.nn.Linear(4, 4), "dimap", 0.5)


@pytest.mark.parametrize("ratio", RATIOS)
def test_dimap_equals_per_module_oracle_with_exact_counts(model, ratio):
    masks = compute_masks(model, "dimap", ratio)
    weights = prunable_weights(model)
    for module, names in modules_of(weights).items():
        expected = removed_lowest([eq10_numpy(weights[n].detach().numpy()) for n in names], ratio)
        for n, e in zip(names, expected):
            assert np.array_equal(masks[n].numpy(), e), n
        size = sum(weights[n].numel() for n in names)
        assert sum(int((~masks[n]).sum()) for n in names) == n_removed(size, ratio)


@pytest.mark.parametrize("ratio", RATIOS)
def test_single_module_equals_global_lamp(model, ratio):
    masks = compute_masks(model, "single_module", ratio)
    weights = prunable_weights(model)
    expected = removed_lowest([eq10_numpy(w.detach().numpy()) for w in weights.values()], ratio)
    for n, e in zip(weights, expected):
        assert np.array_equal(masks[n].numpy(), e), n


@pytest.mark.parametrize("ratio", [0.15, 0.55, 0.9])
def test_global_magnitude_equals_torch_global_unstructured(ratio):
    model = make_tiny_swin(seed=8)
    masks = compute_masks(model, "global_magnitude", ratio)
    params = [(model.get_submodule(n.removesuffix(".weight")), "weight") for n in prunable_weights(model)]
    total = sum(m.weight.numel() for m, _ in params)
    assert round(ratio * total) == n_removed(total, ratio)  # both round the same way here
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=ratio)
    for (m, _), n in zip(params, masks):
        assert torch.equal(m.weight_mask.bool(), masks[n]), n


@pytest.mark.parametrize("ratio", [0.15, 0.55, 0.9])
def test_uniform_equals_torch_l1_per_layer(model, ratio):
    masks = compute_masks(model, "uniform", ratio)
    for n, w in prunable_weights(model).items():
        ref = torch_prune.L1Unstructured(amount=n_removed(w.numel(), ratio)).compute_mask(w.detach(),
                                                                                          torch.ones_like(w))
        assert torch.equal(ref.bool(), masks[n]), n
        assert int((~masks[n]).sum()) == n_removed(w.numel(), ratio)


@pytest.mark.parametrize("method", ["dimap", "single_module", "uniform", "global_magnitude"])
def test_masks_cover_exactly_the_prunable_set_and_are_deterministic(model, method):
    masks = compute_masks(model, method, 0.55)
    assert list(masks) == list(prunable_weights(model))
    assert all(m.dtype == torch.bool and m.shape == model.get_parameter(n).shape for n, m in masks.items())
    again = compute_masks(make_tiny_swin(seed=7), method, 0.55)
    assert all(torch.equal(masks[n], again[n]) for n in masks)


def test_dimap_prunes_the_same_share_in_each_module_but_not_each_layer(model):
    masks = compute_masks(model, "dimap", 0.55)
    groups = modules_of(masks, module_map(model))
    for names in groups.values():
        kept = sum(int(masks[n].sum()) for n in names)
        size = sum(masks[n].numel() for n in names)
        assert abs(kept / size - 0.45) < 1e-3
    fractions = {n: masks[n].float().mean().item() for n in masks}
    assert max(fractions.values()) - min(fractions.values()) > 0.01  # layers differ within a module


def test_ties_and_zeros_are_deterministic():
    from dimap.pruning.criteria import dimap as dimap_criterion
    from dimap.pruning.modules import PrunableWeights
    name = "layers.0.blocks.0.attn.qkv.weight"
    w = PrunableWeights({name: torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, -2.0, 1.0, 0.5]])}, {name: QKV})
    m = dimap_criterion(w, 0.5)["layers.0.blocks.0.attn.qkv.weight"]
    # four removed: both zeros, then the 0.5, then the last of the three tied 1.0s (lowest Eq. 10 score)
    assert m.tolist() == [[True, True, False, False], [True, True, False, False]]
