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


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy", "torch"])
def test_sorted_magnitudes_of_half_precision_weights_are_exact_float32(numpy_path, monkeypatch):
    """bf16/fp16 weights (a model loaded in half precision): sorted |w| in float32, every value exact; float32
    stays float32 (a float64 copy of Swin-B's weights would double the memory of pruning)."""
    from dimap.pruning import scores
    monkeypatch.setattr(scores, "USE_NUMPY_ON_CPU", numpy_path)
    w = torch.randn(40, 7, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        got = scores.sorted_magnitudes(w.to(dtype))
        assert got.dtype == torch.float32
        assert torch.equal(got, torch.sort(w.to(dtype).float().abs().reshape(-1)).values)
    assert scores.sorted_magnitudes(w.double()).dtype == torch.float64


@pytest.mark.parametrize("as_numpy", [True, False], ids=["numpy", "torch"])
def test_sorted_dimap_scores_when_the_largest_weight_is_one_and_of_an_empty_layer(as_numpy):
    from dimap.pruning.scores import sorted_dimap_scores
    w = torch.tensor([-0.5, 1.0, 0.25, 0.0], dtype=torch.float64)  # the largest square, 1.0, is the last cum sum
    ascending = torch.sort(w.abs()).values
    got = sorted_dimap_scores(ascending.numpy() if as_numpy else ascending)
    want = torch.sort(dimap_scores(w)).values
    assert np.array_equal(np.asarray(got), want.numpy())  # [0, 0.0625/1.3125, 0.25/1.25, 1.0]
    empty = sorted_dimap_scores(np.zeros(0) if as_numpy else torch.zeros(0, dtype=torch.float64))
    assert len(empty) == 0


def test_lamp_orders_ties_by_index_ascending():
    """The oracle's tie rule, on a layer long enough that torch's unstable sort would scramble ties (n >= 1000)."""
    n = 2000
    got = lamp_scores(torch.ones(n))
    assert torch.equal(got, 1.0 / torch.arange(n, 0, -1, dtype=torch.float64))  # index i: 1 / (n - i)
