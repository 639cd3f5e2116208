"""N:M with the data-aware criteria: Wanda's 2:4 is its authors' N:M (in every row, the 2 largest |W| * ||X|| of
each 4 consecutive inputs), computed here independently of the hooks under test; SparseGPT prunes every layer
N:M with its own update, and takes only the ratio (M-N)/M."""
import copy

import pytest
import torch

from dimap.errors import UserError
from dimap.pruning.masks import compute_masks
from dimap.pruning.modules import modules_of, prunable_weights
from tests.pruning.test_wanda import calibration, expected_scores, swin_and_images  # noqa: F401 (a fixture)


def expected_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every row, every group of m consecutive columns keeps its n highest scores (the lower column removed
    first among equals), in plain Python order."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for i, row in enumerate(scores.tolist()):
        for g in range(0, len(row), m):
            cols = sorted(range(g, g + m), key=lambda j: (row[j], j))
            for j in cols[m - n:]:
                keep[i, j] = True
    return keep


def is_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    return bool((mask.reshape(mask.shape[0], -1, m).sum(-1) == n).all())


@pytest.mark.parametrize("method", ["wanda", "wanda_module"])
@pytest.mark.parametrize("nm", [(2, 4), (1, 4)])
def test_wanda_every_layer_nm_is_the_formula_in_each_group(swin_and_images, method, nm):
    model, images = swin_and_images
    n, m = nm
    record = {}
    masks = compute_masks(model, method, (m - n) / m, pattern=f"{n}:{m}", calibration=calibration(images),
                          record=record)
    scores = expected_scores(model, images)
    for name, s in scores.items():
        assert torch.equal(masks[name], expected_nm(s, n, m)), name
    assert record["nm_layers"] == list(scores) and record["dense_layers"] == []


@pytest.mark.parametrize("method", ["wanda", "wanda_module"])
def test_wanda_below_the_pattern_makes_each_layer_dense_or_exact_nm(swin_and_images, method):
    model, images = swin_and_images
    record = {}
    masks = compute_masks(model, method, 0.25, pattern="2:4", calibration=calibration(images), record=record)
    scores = expected_scores(model, images)
    assert record["nm_layers"] and record["dense_layers"]
    for name in record["nm_layers"]:
        assert torch.equal(masks[name], expected_nm(scores[name], 2, 4)), name
    for name in record["dense_layers"]:
        assert bool(masks[name].all()), name
    weights = prunable_weights(model)
    groups = modules_of(weights).values() if method == "wanda_module" else [list(weights)]
    for names in groups:  # each group (a module, or the whole model) loses at least its share
        removed = sum(int((~masks[x]).sum()) for x in names)
        assert removed >= 0.25 * sum(weights[x].numel() for x in names)


def test_sparsegpt_2of4_is_exact_nm_and_updates_the_kept_weights(swin_and_images):
    model, images = swin_and_images
    before = {k: v.clone() for k, v in prunable_weights(model).items()}
    masks = compute_masks(model, "sparsegpt", 0.5, pattern="2:4", calibration=calibration(images))
    after = prunable_weights(model)
    for name, mask in masks.items():
        assert is_nm(mask, 2, 4), name
        assert bool((after[name][~mask] == 0).all()), name
        assert not torch.equal(after[name][mask], before[name][mask]), name  # kept weights updated, not only masked


def test_sparsegpt_nm_refuses_a_partial_ratio(swin_and_images):
    model, images = swin_and_images
    with pytest.raises(UserError, match="prune.ratio=0.5"):
        compute_masks(copy.deepcopy(model), "sparsegpt", 0.25, pattern="2:4", calibration=calibration(images))
