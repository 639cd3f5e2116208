"""masks_for_run: which masks a training/evaluation run applies, and how the run is recorded (train.py calls it)."""
import pytest
import torch

from dimap.pruning.inspect_checkpoint import masks_for_run
from dimap.pruning.masks import apply_masks, compute_masks
from dimap.pruning.modules import prunable_weights
from tests.conftest import make_tiny_swin


def removed_share(masks):
    return sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


@pytest.fixture
def pruned_file_model():
    """A model whose weights came from a file pruned at 0.4 (the authors' checkpoints: pruned weights are zeros)."""
    model = make_tiny_swin(seed=1)
    apply_masks(model, compute_masks(model, "uniform", 0.4))
    return model


@pytest.mark.parametrize("method, ratio", [("none", 0.0), ("none", 0.7), ("dimap", 0.0)])
def test_a_pruned_file_is_run_as_the_pruned_model_it_is(pruned_file_model, method, ratio):
    masks, record = masks_for_run(pruned_file_model, method, ratio)
    zeros = {n: w != 0 for n, w in prunable_weights(pruned_file_model).items()}
    assert masks.keys() == zeros.keys() and all(torch.equal(masks[n], zeros[n]) for n in zeros)
    assert record["method"] == "none" and record["masks_from"] == "zeros of model.weights"
    assert record["ratio"] == pytest.approx(removed_share(zeros)) and 0.39 < record["ratio"] < 0.41
    assert record["weights_zero_share"] == record["ratio"] and record["weights_already_pruned"] is True


def test_dense_weights_at_ratio_zero_are_recorded_as_unpruned():
    masks, record = masks_for_run(make_tiny_swin(), "dimap", 0.0)
    assert all(bool(m.all()) for m in masks.values())
    assert (record["method"], record["ratio"], record["weights_zero_share"]) == ("none", 0.0, 0.0)
    assert record["weights_already_pruned"] is False


def test_a_method_at_a_ratio_gives_that_methods_masks():
    model = make_tiny_swin()
    masks, record = masks_for_run(model, "dimap", 0.5)
    expected = compute_masks(make_tiny_swin(), "dimap", 0.5)
    assert masks.keys() == expected.keys() and all(torch.equal(masks[n], expected[n]) for n in expected)
    assert (record["method"], record["ratio"], record["masks_from"]) == ("dimap", 0.5, "dimap")
    assert record["module_ratios"] is None and record["weights_already_pruned"] is False


def test_module_ratios_record_the_share_removed_over_all_modules():
    shares = {"QKV-M": 0.2, "PRJ-M": 0.4, "MLP-M": 0.6}
    masks, record = masks_for_run(make_tiny_swin(), "dimap", 0.0, module_ratios=shares)
    assert record["method"] == "dimap" and record["module_ratios"] == shares
    assert record["ratio"] == pytest.approx(removed_share(masks))
    assert 0.2 < record["ratio"] < 0.6  # the weighted share, not any one module's, nor ratio 0


def test_a_zero_share_at_the_threshold_counts_as_already_pruned(monkeypatch):
    """ALREADY_PRUNED is the smallest share of zeros that reads as a pruned file: at it, not only above it."""
    from dimap.pruning import inspect_checkpoint
    model = make_tiny_swin()
    first = next(iter(prunable_weights(model).values()))
    with torch.no_grad():
        first.view(-1)[:7] = 0
    share = removed_share({n: w != 0 for n, w in prunable_weights(model).items()})
    monkeypatch.setattr(inspect_checkpoint, "ALREADY_PRUNED", share)
    assert masks_for_run(model, "none", 0.0)[1]["weights_already_pruned"] is True
