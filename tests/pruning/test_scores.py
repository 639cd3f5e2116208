"""Eq. 10 against a direct evaluation, against LAMP, and its properties."""
import numpy as np
import pytest
import torch

from dimap.pruning.scores import dimap_scores, lamp_scores, magnitude_scores


def eq10_direct(w: np.ndarray) -> np.ndarray:
    """Imp(w_j) = w_j^2 / sum of w_i^2 over every weight with |w_i| >= |w_j| (distinct magnitudes)."""
    flat = w.reshape(-1).astype(np.float64)
    a = np.abs(flat)
    return np.array([flat[j] ** 2 / np.sum(flat[a >= a[j]] ** 2) for j in range(flat.size)]).reshape(w.shape)


@pytest.mark.parametrize("shape", [(7,), (5, 6), (12, 4)])
def test_eq10_equals_direct_evaluation(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(dimap_scores(w).numpy(), eq10_direct(w.numpy()), rtol=1e-12)


def test_single_layer_equals_lamp():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(dimap_scores(w), lamp_scores(w), rtol=1e-12, atol=0)


def test_monotone_in_magnitude_and_largest_scores_one():
    w = torch.randn(40, 40, generator=torch.Generator().manual_seed(3))
    s = dimap_scores(w).reshape(-1)
    order = torch.argsort(w.abs().reshape(-1), descending=True)
    assert torch.all(s[order][1:] <= s[order][:-1])
    assert s[order[0]].item() == 1.0
    assert torch.all((s > 0) & (s <= 1))


def test_hand_computed_example():
    # sorted magnitudes 3, 2, 1 -> 9/9, 4/13, 1/14
    s = dimap_scores(torch.tensor([[1.0, -3.0, 2.0]]))
    torch.testing.assert_close(s, torch.tensor([[1 / 14, 1.0, 4 / 13]], dtype=torch.float64))


def test_zeros_score_zero_and_ties_are_deterministic():
    w = torch.tensor([0.0, 2.0, -2.0, 0.0, 1.0])
    s = dimap_scores(w)
    assert s[0] == 0 and s[3] == 0
    assert s[1] == 1.0 and s[2] == 0.5  # tie: the earlier index comes first and scores higher
    assert torch.equal(dimap_scores(torch.zeros(4)), torch.zeros(4, dtype=torch.float64))
    # sorted magnitudes 2, 2, 1, 0, 0 -> 4/4, 4/8, 1/9, 0, 0
    assert torch.equal(s, torch.tensor([0.0, 1.0, 0.5, 0.0, 1 / 9], dtype=torch.float64))


def test_scale_invariant_and_data_free():
    w = torch.randn(16, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(dimap_scores(w), dimap_scores(10 * w))
    assert torch.equal(magnitude_scores(-w), w.abs().double())
