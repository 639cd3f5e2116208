"""Inspect mode (prune.py prune=none) on a pruned checkpoint in the official Swin format (the authors' files)."""
import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import prune
from dimap.pruning.inspect_checkpoint import compare_masks
from dimap.pruning.masks import apply_masks, compute_masks
from dimap.pruning.modules import PRUNABLE_MODULES, prunable_weights
from tests.conftest import make_tiny_swin

CONF = Path(__file__).resolve().parents[2] / "conf"
KWARGS = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
              num_classes=10)
RATIO = 0.5  # every module size of this model is even: exactly half of each is removed


def official(state_dict: dict) -> dict:
    """timm names -> the official Microsoft Swin layout: downsample at the end of a stage, `head.` not `head.fc.`."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v.clone()
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(dense, pruned) checkpoint files in the official `{'model': state_dict}` format, and the true masks."""
    d = tmp_path_factory.mktemp("ckpt")
    model = make_tiny_swin(seed=1, **KWARGS).eval()
    torch.save({"model": official(model.state_dict())}, d / "dense.pth")
    masks = compute_masks(model, "dimap", RATIO)
    apply_masks(model, masks)
    pruned = official(model.state_dict())
    assert "layers.0.downsample.reduction.weight" in pruned and "head.weight" in pruned  # really the old layout
    torch.save({"model": pruned, "epoch": 30}, d / "pruned.pth")
    return d / "dense.pth", d / "pruned.pth", masks


def inspect_cfg(weights, out_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("prune", overrides=["prune=none", f"model.weights={weights}", f"output_dir={out_dir}",
                                          "plot=false", *overrides])
    with open_dict(cfg):
        cfg.model.kwargs = KWARGS
        cfg.model.img_size, cfg.model.drop_path_rate = 32, 0.0
    return cfg


def test_inspect_reports_ratio_and_full_overlap(checkpoints, tmp_path):
    dense, pruned, true_masks = checkpoints
    summary = prune.run(inspect_cfg(pruned, tmp_path, f"prune.compare_dense={dense}"))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["method"] == summary["method"] == "none" and on_disk["inspect"] is True
    assert on_disk["ratio"] == RATIO and on_disk["prunable_removed_fraction"] == RATIO
    assert all(m["kept_fraction"] == 1 - RATIO for m in on_disk["modules"].values())
    # masks keyed by timm names after the checkpoint filter, exactly the prunable weights
    assert [l["name"] for l in on_disk["layers"]] == list(true_masks)
    assert all(l["module"] in PRUNABLE_MODULES for l in on_disk["layers"])
    comp = on_disk["compare"]
    assert comp["method"] == "dimap" and comp["ratio"] == RATIO
    assert comp["overall"]["iou_kept"] == 1.0 and comp["overall"]["same_bits"] == 1.0
    assert set(comp["modules"]) == {"QKV-M", "PRJ-M", "MLP-M"}
    assert all(c["iou_kept"] == 1.0 and c["same_bits"] == 1.0 for c in comp["layers"].values())
    assert not (tmp_path / "model.safetensors").exists()  # inspect writes no model file


def test_inspect_against_another_criterion_disagrees(checkpoints, tmp_path):
    dense, pruned, _ = checkpoints
    summary = prune.run(inspect_cfg(pruned, tmp_path, f"prune.compare_dense={dense}",
                                    "prune.compare_method=global_magnitude"))
    assert summary["ratio"] == RATIO and summary["compare"]["overall"]["iou_kept"] < 1.0


def test_inspect_without_comparison_and_needs_a_file(checkpoints, tmp_path):
    _, pruned, _ = checkpoints
    assert prune.run(inspect_cfg(pruned, tmp_path / "a"))["compare"] is None
    with pytest.raises(SystemExit) as e:
        prune.run(inspect_cfg("random", tmp_path / "b"))
    assert e.value.code == 2


def test_compare_masks_counts():
    a = {"layers.0.blocks.0.attn.qkv.weight": torch.tensor([True, True, False, False])}
    b = {"layers.0.blocks.0.attn.qkv.weight": torch.tensor([True, False, True, False])}
    c = compare_masks(a, b, {"layers.0.blocks.0.attn.qkv.weight": "QKV-M"})
    assert c["overall"]["iou_kept"] == pytest.approx(1 / 3) and c["overall"]["same_bits"] == 0.5
    assert c["modules"]["QKV-M"]["kept_fraction_ours"] == 0.5


def test_prunable_weights_of_loaded_checkpoint_are_zero_where_pruned(checkpoints):
    """The official-format file round-trips through timm's filter: zeros exactly where the masks say."""
    from dimap.models import build_model
    _, pruned, true_masks = checkpoints
    model = build_model({"name": "swin_tiny_patch4_window7_224", "kwargs": KWARGS, "weights": str(pruned)})
    for name, w in prunable_weights(model).items():
        assert torch.equal(w != 0, true_masks[name])


def test_per_module_comparison_recovers_another_split(tmp_path):
    """A checkpoint pruned with a different share per module: the equal-r comparison disagrees, the comparison at
    each module's own measured share agrees bit for bit, and the per-module kept fractions show the split."""
    shares = {"QKV-M": 0.3, "PRJ-M": 0.5, "MLP-M": 0.7}
    model = make_tiny_swin(seed=2, **KWARGS).eval()
    torch.save({"model": official(model.state_dict())}, tmp_path / "dense.pth")
    apply_masks(model, compute_masks(model, "dimap", 0.5, module_ratios=shares))
    torch.save({"model": official(model.state_dict())}, tmp_path / "pruned.pth")
    s = prune.run(inspect_cfg(tmp_path / "pruned.pth", tmp_path / "out", f"prune.compare_dense={tmp_path / 'dense.pth'}"))
    comp = s["compare"]
    assert comp["checkpoint_module_kept_fraction"] == pytest.approx({m: 1 - v for m, v in shares.items()}, abs=0.01)
    assert comp["module_share_spread"] == pytest.approx(0.4, abs=0.02)
    assert comp["overall"]["iou_kept"] < 0.99
    per_module = comp["per_module_ratio"]
    assert per_module["overall"]["iou_kept"] == 1.0 and per_module["overall"]["same_bits"] == 1.0
    assert per_module["module_ratios"] == comp["checkpoint_module_removed"]


def model_cfg(weights):
    return {"name": "swin_tiny_patch4_window7_224", "kwargs": KWARGS, "weights": str(weights)}


@pytest.mark.parametrize("method, per_module", [("uniform", True), ("dimap", True), ("global_magnitude", False)])
def test_the_per_module_comparison_runs_for_the_criteria_that_rank_per_module(checkpoints, method, per_module):
    """uniform and dimap rank within each module, so they can be replayed at each module's measured share; one-
    threshold criteria cannot (module_ratios does not apply to them) and get the equal-r comparison only."""
    from dimap.pruning.inspect_checkpoint import inspect_checkpoint
    dense, pruned, _ = checkpoints
    _, _, comparison = inspect_checkpoint(model_cfg(pruned), compare_dense=str(dense), compare_method=method)
    assert comparison["method"] == method and ("per_module_ratio" in comparison) is per_module


def test_missing_dense_weights_name_the_knob_that_gave_them(checkpoints, tmp_path):
    """The dense file came from prune.compare_dense, so the sentence must send the user there, not to model.weights."""
    from dimap.errors import UserError
    from dimap.pruning.inspect_checkpoint import inspect_checkpoint
    _, pruned, _ = checkpoints
    with pytest.raises(UserError) as e:
        inspect_checkpoint(model_cfg(pruned), compare_dense=str(tmp_path / "nowhere.pth"))
    assert str(e.value).startswith(f"prune.compare_dense='{tmp_path / 'nowhere.pth'}' is not a file: pass "
                                   "prune.compare_dense=PATH") and "model.weights=" not in str(e.value)
