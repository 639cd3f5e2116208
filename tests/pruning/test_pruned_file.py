"""Save & load: a pruned model file loads into a fresh timm model with no dimap code, identical logits."""
import pytest
import timm
import torch
from safetensors.torch import load_file

from dimap import UserError, apply_masks, compute_masks, masks_from_state_dict, read_pruned, save_pruned
from tests.conftest import TINY_SWIN, make_tiny_swin


def test_round_trip_gives_identical_logits_and_masks(tmp_path):
    model = make_tiny_swin(seed=5).eval()
    masks = compute_masks(model, "dimap", 0.55)
    apply_masks(model, masks)
    save_pruned(model, masks, tmp_path, {"model": "swin_tiny_patch4_window7_224", "ratio": 0.55})

    fresh = timm.create_model("swin_tiny_patch4_window7_224", **TINY_SWIN).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")))  # plain timm, nothing of ours
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(fresh(x), model(x))

    state, loaded_masks, meta = read_pruned(tmp_path / "model.safetensors")
    assert meta["ratio"] == 0.55
    assert all(torch.equal(loaded_masks[n], masks[n]) for n in masks) and set(loaded_masks) == set(masks)
    from_zeros = masks_from_state_dict(state, make_tiny_swin())
    assert all(torch.equal(from_zeros[n], masks[n]) for n in masks)
    removed = sum(int((~m).sum()) for m in masks.values())
    assert sum(int((state[n] == 0).sum()) for n in masks) == removed
    assert not list(tmp_path.glob("*.tmp"))


def test_read_pruned_takes_the_run_folder_and_refuses_a_missing_file_in_one_sentence(tmp_path):
    model = make_tiny_swin(seed=6)
    masks = compute_masks(model, "dimap", 0.3)
    save_pruned(model, masks, tmp_path / "run", {"ratio": 0.3})
    state, loaded, meta = read_pruned(tmp_path / "run")
    assert meta == {"ratio": 0.3} and all(torch.equal(loaded[n], masks[n]) for n in masks)
    with pytest.raises(UserError, match=r"^[^\n]*output_dir holding it$"):
        read_pruned(tmp_path / "empty")


def test_masks_recovered_without_the_mask_file(tmp_path):
    model = make_tiny_swin(seed=6)
    masks = compute_masks(model, "uniform", 0.3)
    apply_masks(model, masks)
    save_pruned(model, masks, tmp_path, {"model": "swin_tiny_patch4_window7_224", "kwargs": TINY_SWIN})
    (tmp_path / "masks.safetensors").unlink()
    _, loaded, _ = read_pruned(tmp_path / "model.safetensors")
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)
