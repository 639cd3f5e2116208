"""FixedMask alone (apply, mask_grads, violations, rebinding) and the removal count's rounding rule."""
import pytest
import torch
from torch import nn

from dimap import FixedMask, apply_masks, mask_checksum, masks_from_state_dict
from dimap.errors import UserError
from dimap.pruning.removal_count import n_removed


def test_n_removed_rounds_half_up():
    # half-to-even (Python's round) would give 2, 10 and 0: the counts the paper rows and oracles rely on
    assert n_removed(5, 0.5) == 3 and n_removed(21, 0.5) == 11 and n_removed(1, 0.5) == 1
    assert n_removed(10, 0.34) == 3 and n_removed(10, 0.36) == 4 and n_removed(7, 0.0) == 0
    assert n_removed(1000, 0.55) == 550 and isinstance(n_removed(3, 0.5), int)


class TwoLayers(nn.Module):
    """Parameter names a FixedMask can key on; the big layer spans several CPU chunks."""

    def __init__(self):
        super().__init__()
        self.big = nn.Linear(300, 200)     # 60,000 weights: 4 chunks of FixedMask.CHUNK
        self.small = nn.Linear(8, 4)
        self.dense = nn.Linear(4, 4)       # fully kept: left out of the hot path


def ones_model_and_masks(seed=0):
    model = TwoLayers()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    g = torch.Generator().manual_seed(seed)
    masks = {"big.weight": torch.rand(200, 300, generator=g) > 0.4,
             "small.weight": torch.rand(4, 8, generator=g) > 0.5,
             "dense.weight": torch.ones(4, 4, dtype=torch.bool)}
    return model, masks


def test_apply_zeroes_every_pruned_weight_in_every_chunk_and_nothing_else():
    model, masks = ones_model_and_masks()
    assert model.big.weight.numel() > 3 * FixedMask.CHUNK
    fixed = FixedMask(model, masks)
    assert fixed.violations() == int(sum((~m).sum() for m in masks.values())) > 0
    fixed.apply()
    assert fixed.violations() == 0
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(params[name], mask.float()), name  # kept weights untouched (still 1.0)
    assert torch.equal(model.big.bias, torch.ones(200))


def test_apply_follows_a_replaced_parameter_storage():
    model, masks = ones_model_and_masks()
    fixed = FixedMask(model, masks)
    model.big.weight.data = torch.full((200, 300), 2.0)  # e.g. load_state_dict(assign=True), p.data = ...
    fixed.apply()
    assert fixed.violations() == 0 and torch.equal(model.big.weight, 2.0 * masks["big.weight"].float())


def test_mask_grads_zeroes_only_pruned_gradients():
    model, masks = ones_model_and_masks(seed=1)
    fixed = FixedMask(model, masks)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    model.small.weight.grad = None  # a parameter without a gradient is skipped, not an error
    fixed.mask_grads()
    assert torch.equal(model.big.weight.grad, 3.0 * masks["big.weight"].float())
    assert torch.equal(model.dense.weight.grad, torch.full((4, 4), 3.0))
    assert model.small.weight.grad is None
    assert fixed.violations() > 0  # mask_grads touches gradients, never weights


def test_apply_masks_and_violations_count_exactly():
    model, masks = ones_model_and_masks(seed=2)
    apply_masks(model, masks)
    assert FixedMask(model, masks).violations() == 0
    with torch.no_grad():
        model.small.weight.fill_(1.0)
    assert FixedMask(model, masks).violations() == int((~masks["small.weight"]).sum())


def test_fixed_mask_refuses_masks_of_another_model():
    model, masks = ones_model_and_masks()
    with pytest.raises(UserError, match="prune this architecture again"):
        FixedMask(model, {**masks, "layers.0.blocks.0.attn.qkv.weight": torch.ones(3, 3, dtype=torch.bool)})


def test_masks_from_state_dict_and_checksum():
    from tests.conftest import make_tiny_swin
    model = make_tiny_swin()
    name = "layers.0.blocks.0.attn.qkv.weight"
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd[name][0, :5] = 0.0
    sd["layers.0.blocks.0.attn.qkv.bias"].zero_()  # a zero bias is not a pruned weight
    masks = masks_from_state_dict(sd, model)
    assert name in masks and "layers.0.blocks.0.attn.qkv.bias" not in masks and "head.fc.weight" not in masks
    assert int((~masks[name]).sum()) == 5 and not masks[name][0, :5].any()
    with pytest.raises(UserError):
        masks_from_state_dict({"head.fc.weight": torch.zeros(2)}, model)
    flipped = {k: ~v for k, v in masks.items()}
    assert mask_checksum(masks) == mask_checksum(dict(masks)) != mask_checksum(flipped)
    assert len(mask_checksum(masks)) == 16
