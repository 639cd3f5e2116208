"""prune.module_ratios: one share per module (the paper does not say how it split its target across modules)."""
from pathlib import Path

import pytest
import torch

from dimap import UserError, compute_masks, prunable_weights
from dimap.pruning import reference
from dimap.pruning.modules import MLP, PRJ, QKV, module_map, modules_of
from dimap.pruning.removal_count import n_removed
from tests.conftest import make_tiny_swin

SHARES = {QKV: 0.5, PRJ: 0.4, MLP: 0.6}


@pytest.fixture(scope="module")
def model():
    return make_tiny_swin(seed=3)


def removed(masks, names):
    return sum(int((~masks[n]).sum()) for n in names)


def test_dimap_removes_each_modules_own_share_exactly(model):
    weights = prunable_weights(model)
    masks = compute_masks(model, "dimap", 0.55, module_ratios=SHARES)
    for module, names in modules_of(weights).items():
        size = sum(weights[n].numel() for n in names)
        assert removed(masks, names) == n_removed(size, SHARES[module]), module
        # the module's masks are the straightforward oracle's for that module alone at its share
        oracle = reference.masks_for_ratio({n: reference.dimap_scores(weights[n].detach()) for n in names}, [names],
                                           SHARES[module])
        assert all(torch.equal(masks[n], oracle[n]) for n in names), module


def test_default_and_partial_ratios_are_the_same_r(model):
    plain = compute_masks(model, "dimap", 0.35)
    for module_ratios in (None, {}, {QKV: 0.35, PRJ: 0.35, MLP: 0.35}):
        same = compute_masks(model, "dimap", 0.35, module_ratios=module_ratios)
        assert all(torch.equal(plain[n], same[n]) for n in plain)
    partial = compute_masks(model, "dimap", 0.35, module_ratios={PRJ: 0.8})  # unnamed modules keep prune.ratio
    weights = prunable_weights(model)
    for module, names in modules_of(weights).items():
        size = sum(weights[n].numel() for n in names)
        assert removed(partial, names) == n_removed(size, 0.8 if module == PRJ else 0.35)


def test_uniform_gives_every_layer_its_modules_share(model):
    masks, module = compute_masks(model, "uniform", 0.2, module_ratios=SHARES), module_map(model)
    for name, mask in masks.items():
        assert int((~mask).sum()) == n_removed(mask.numel(), SHARES[module[name]]), name


@pytest.mark.parametrize("method", ["single_module", "global_magnitude"])
def test_one_threshold_criteria_refuse(model, method):
    with pytest.raises(UserError, match="does not apply to " + method):
        compute_masks(model, method, 0.5, module_ratios=SHARES)


@pytest.mark.parametrize("bad", [{"ATTN-M": 0.5}, {QKV: 1.0}, {QKV: "half"}, [0.5, 0.5, 0.5]])
def test_bad_module_ratios_are_refused(model, bad):
    with pytest.raises(UserError, match="prune.module_ratios"):
        compute_masks(model, "dimap", 0.5, module_ratios=bad)


def test_prune_py_takes_module_ratios_from_the_command_line(tmp_path):
    """The Hydra override a user types, module names and all, reaches the masks and the summary."""
    from hydra import compose, initialize_config_dir

    import prune
    conf = str(Path(prune.__file__).resolve().parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("prune", overrides=["model=swin_nano", "prune.module_ratios={QKV-M:0.5,PRJ-M:0.4,MLP-M:0.6}",
                                          f"output_dir={tmp_path}", "plot=false"])
    s = prune.run(cfg)
    assert s["module_ratios"] == SHARES
    assert {m: round(1 - v["kept_fraction"], 3) for m, v in s["modules"].items()} == SHARES
    assert s["ratio"] == pytest.approx(s["prunable_removed_fraction"]) and s["ratio"] != 0.55


def test_the_refusals_name_the_fix():
    """Each refusal sends the user to what to type: the module names and an example, or the criteria it fits."""
    with pytest.raises(UserError) as e:
        compute_masks(make_tiny_swin(), "dimap", 0.5, module_ratios={"ATTN-M": 0.5})
    assert "must map modules (QKV-M, PRJ-M, MLP-M) to shares, e.g. prune.module_ratios={QKV-M:0.5,PRJ-M:0.4,MLP-M:0.6}" \
        in str(e.value)
    with pytest.raises(UserError) as e:
        compute_masks(make_tiny_swin(), "global_magnitude", 0.5, module_ratios=SHARES)
    assert str(e.value).endswith("drop prune.module_ratios or use prune=dimap (or uniform)")


def test_a_module_left_dense_is_a_valid_share(model):
    """0 is a share: prune the MLPs only, the attention stays dense."""
    masks = compute_masks(model, "dimap", 0.5, module_ratios={QKV: 0.0, PRJ: 0.0, MLP: 0.5})
    for module, names in modules_of(prunable_weights(model)).items():
        size = sum(masks[n].numel() for n in names)
        assert removed(masks, names) == (n_removed(size, 0.5) if module == MLP else 0), module
