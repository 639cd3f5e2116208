"""The data-aware baselines on every supported family at test size: the input statistics the hooks collect equal
those of an independent capture (TorchFunctionMode over F.linear, which also sees SwinV2's F.linear qkv), and each
method prunes exactly its share (Wanda per output row, SparseGPT per layer, module-aware Wanda per module)."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dimap.models import build_model
from dimap.pruning.calibration import Calibration
from dimap.pruning.masks import compute_masks
from dimap.pruning.modules import modules_of, prunable_weights
from dimap.pruning.removal_count import n_removed
from dimap.pruning.wanda import input_norms
from tests.families import FAMILIES, family_params
from tests.linear_inputs import linear_inputs
from tests.pruning.test_families import tiny

ROOT = Path(__file__).resolve().parents[2]
FAST = ["swin_tiny", "vit_nano"]  # the others are slow: every family's tiny model, three methods each


def model_and_images(family: str):
    torch.manual_seed(0)
    if family == "swin_tiny":
        from tests.conftest import make_tiny_swin
        model, size, chans = make_tiny_swin(seed=2).eval(), 32, 3
    elif family == "vit_nano":
        model = build_model(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/vit_nano.yaml"))).eval()
        size, chans = 32, 1
    else:
        model, size, chans = tiny(family), FAMILIES[family][1], 3
    return model, torch.randn(3, chans, size, size)


def calibration(images):
    return Calibration(images, list(range(len(images))), 0, len(images), batch_size=2)


def check_family(family):
    model, images = model_and_images(family)
    weights = prunable_weights(model)
    seen = linear_inputs(model, images, list(weights))
    norms = input_norms(model, list(weights), lambda: calibration(images).batches())
    for n in weights:
        torch.testing.assert_close(norms[n], seen[n].square().sum(0).sqrt(), rtol=1e-5, atol=1e-6)

    masks = compute_masks(model, "wanda", 0.5, calibration=calibration(images))
    assert all(((~m).sum(1) == n_removed(m.shape[1], 0.5)).all() for m in masks.values())
    masks = compute_masks(model, "wanda_module", 0.5, calibration=calibration(images))
    for names in modules_of(weights).values():
        assert sum(int((~masks[n]).sum()) for n in names) == n_removed(sum(masks[n].numel() for n in names), 0.5)

    before = {n: w.detach().clone() for n, w in weights.items()}
    masks = compute_masks(model, "sparsegpt", 0.5, calibration=calibration(images))
    for n, m in masks.items():
        assert int((~m).sum()) == n_removed(m.numel(), 0.5), n
        assert not weights[n][~m].any(), n
    assert any(not torch.equal(weights[n][m], before[n][m]) for n, m in masks.items())  # kept weights updated
    with torch.no_grad():
        assert torch.isfinite(model(images)).all()


@pytest.mark.parametrize("family", FAST)
def test_baselines_on_fast_families(family):
    check_family(family)


@pytest.mark.slow
@pytest.mark.parametrize("family", family_params())
def test_baselines_on_every_family(family):
    check_family(family)
