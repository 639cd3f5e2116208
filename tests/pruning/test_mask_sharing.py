"""FixedMask holds one dense copy of the multipliers per device, shared by the model's and its EMA copy's, and none
for layers with nothing pruned; both masks still hold through training."""
import copy

import torch
from conftest import make_tiny_swin
from timm.utils import ModelEmaV3

from dimap.pruning.masks import FixedMask, apply_masks, compute_masks
from dimap.training.engine import train_one_epoch


def storages(*fixed_masks) -> dict[int, int]:
    """Bytes of every distinct multiplier storage the FixedMasks hold."""
    return {f.untyped_storage().data_ptr(): f.untyped_storage().nbytes() for m in fixed_masks for f in m.factors}


def test_model_and_ema_share_one_copy_and_fully_kept_layers_hold_none():
    model = make_tiny_swin(drop_path_rate=0.0)
    masks = compute_masks(model, "dimap", 0.55)
    kept = [n for n in masks if "layers.3" in n]  # a stage with nothing pruned
    masks.update({n: torch.ones_like(masks[n]) for n in kept})
    apply_masks(model, masks)
    pruned = [n for n in masks if not masks[n].all()]
    assert kept and len(pruned) == len(masks) - len(kept)
    fixed = FixedMask(model, masks)
    ema = ModelEmaV3(model, decay=0.5)
    ema_mask = FixedMask(ema.module, masks, like=fixed)
    assert fixed.names == ema_mask.names == pruned
    expected = sum(masks[n].numel() * 4 for n in pruned)  # one fp32 multiplier per weight of the pruned layers only
    assert sum(storages(fixed).values()) == expected
    assert sum(storages(fixed, ema_mask).values()) == expected  # the EMA's adds nothing
    assert sum(storages(FixedMask(ema.module, masks)).values()) == expected  # (unshared: a second copy)

    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(3)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)  # strong decay and momentum: regrowth
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), loader, opt, torch.device("cpu"), 0, fixed_mask=fixed,
                    ema=ema, ema_mask=ema_mask, progress=False)
    assert fixed.violations() == 0 and ema_mask.violations() == 0
    params, ema_params = dict(model.named_parameters()), dict(ema.module.named_parameters())
    for n, m in masks.items():
        assert torch.all(params[n][~m] == 0) and torch.all(ema_params[n][~m] == 0), n
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), ema.module.parameters()))  # two models


def test_a_parameter_of_another_dtype_gets_its_own_multiplier():
    model = make_tiny_swin()
    masks = compute_masks(model, "dimap", 0.55)
    fixed = FixedMask(model, masks)
    half = copy.deepcopy(model).to(torch.bfloat16)
    other = FixedMask(half, masks, like=fixed)
    assert all(f.dtype == torch.bfloat16 for f in other.factors)
    assert not set(storages(other)) & set(storages(fixed))
    other.apply()
    assert other.violations() == 0
