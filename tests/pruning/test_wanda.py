"""Wanda and module-aware Wanda against the formula computed independently: inputs caught with a TorchFunctionMode
(not the module hooks under test), norms and rankings in plain Python order."""
import pytest
import torch

from dimap.errors import UserError
from dimap.pruning.calibration import Calibration
from dimap.pruning.criteria import per_row_masks
from dimap.pruning.masks import compute_masks
from dimap.pruning.modules import modules_of, prunable_weights
from dimap.pruning.removal_count import n_removed
from tests.conftest import make_tiny_swin
from tests.linear_inputs import linear_inputs


def calibration(images: torch.Tensor, batch_size: int = 3) -> Calibration:
    return Calibration(images, list(range(len(images))), seed=0, requested=len(images), batch_size=batch_size)


def expected_scores(model, images) -> dict[str, torch.Tensor]:
    """|W_ij| * sqrt(sum over every input row of x_j^2), float64."""
    weights = prunable_weights(model)
    inputs = linear_inputs(model, images, list(weights))
    return {n: w.detach().double().abs() * inputs[n].square().sum(0).sqrt()[None, :] for n, w in weights.items()}


def expected_row_masks(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per row: the n_removed(columns, ratio) lowest scores go, the lower column first among equals."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    k = n_removed(scores.shape[1], ratio)
    for i, row in enumerate(scores.tolist()):
        for j in sorted(range(len(row)), key=lambda j: (row[j], j))[:k]:
            keep[i, j] = False
    return keep


@pytest.fixture
def swin_and_images():
    torch.manual_seed(1)
    return make_tiny_swin(seed=3).eval(), torch.randn(7, 3, 32, 32)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.77])
def test_wanda_masks_are_the_formula_per_row(swin_and_images, ratio):
    model, images = swin_and_images
    masks = compute_masks(model, "wanda", ratio, calibration=calibration(images))
    scores = expected_scores(model, images)
    assert list(masks) == list(scores)
    for name, s in scores.items():
        assert torch.equal(masks[name], expected_row_masks(s, ratio)), name
        removed = (~masks[name]).sum(1)
        assert removed.tolist() == [n_removed(s.shape[1], ratio)] * s.shape[0], name  # exact in every row


def test_wanda_batching_does_not_change_masks(swin_and_images):
    model, images = swin_and_images
    a = compute_masks(model, "wanda", 0.5, calibration=calibration(images, batch_size=1))
    b = compute_masks(model, "wanda", 0.5, calibration=calibration(images, batch_size=7))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_wanda_leaves_the_weights_alone_and_keeps_train_mode(swin_and_images):
    model, images = swin_and_images
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    compute_masks(model, "wanda", 0.5, calibration=calibration(images))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_per_row_ties_go_to_the_lower_column():
    scores = torch.tensor([[2.0, 1.0, 1.0, 1.0, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert per_row_masks(scores, 0.4).tolist() == [[True, False, False, True, True],
                                                  [False, False, True, True, True]]


@pytest.mark.parametrize("ratio", [0.4, 0.85])
def test_wanda_module_ranks_each_module_under_one_threshold(swin_and_images, ratio):
    model, images = swin_and_images
    masks = compute_masks(model, "wanda_module", ratio, calibration=calibration(images))
    scores = expected_scores(model, images)
    for module, names in modules_of(prunable_weights(model)).items():
        flat = [(v, i, j) for i, n in enumerate(names) for j, v in enumerate(scores[n].reshape(-1).tolist())]
        k = n_removed(len(flat), ratio)
        gone = {(i, j) for _, i, j in sorted(flat)[:k]}
        for i, n in enumerate(names):
            want = torch.tensor([(i, j) not in gone for j in range(scores[n].numel())]).reshape(scores[n].shape)
            assert torch.equal(masks[n], want), (module, n)
        assert sum(int((~masks[n]).sum()) for n in names) == k


def test_wanda_module_is_not_per_row(swin_and_images):
    """The two groupings differ: module-aware Wanda prunes rows and layers unevenly."""
    model, images = swin_and_images
    masks = compute_masks(model, "wanda_module", 0.5, calibration=calibration(images))
    per_row = {tuple((~m).sum(1).tolist()) for m in masks.values()}
    assert len({r for rows in per_row for r in rows}) > 2


def test_module_ratios_give_each_module_its_share(swin_and_images):
    model, images = swin_and_images
    shares = {"QKV-M": 0.2, "PRJ-M": 0.4, "MLP-M": 0.6}
    weights = prunable_weights(model)
    masks = compute_masks(model, "wanda", 0.5, module_ratios=shares, calibration=calibration(images))
    for n, m in masks.items():
        assert (~m).sum(1).tolist() == [n_removed(m.shape[1], shares[weights.module[n]])] * m.shape[0]


def test_data_aware_method_without_calibration_is_one_sentence():
    with pytest.raises(UserError, match="needs calibration images"):
        compute_masks(make_tiny_swin(), "wanda", 0.5)
