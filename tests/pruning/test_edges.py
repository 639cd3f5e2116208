"""Edges the mutation run (scripts/mutation_test.sh) found unguarded: empty and degenerate inputs, the exact
messages of refusals, precomputed FLOPs, checksums of shapes and dtypes, small-magnitude LAMP scores."""
import pytest
import torch
from torch import nn

from dimap import FixedMask, account, compute_masks, flops_by_module, mask_checksum, masks_from_state_dict
from dimap.errors import UserError
from dimap.pruning.accounting import _pct
from dimap.pruning.inspect_checkpoint import compare_masks
from dimap.pruning.masks import check_method, check_ratio
from dimap.pruning.modules import PRUNABLE_MODULES
from dimap.pruning.pruned_file import read_pruned, save_pruned
from dimap.pruning.scores import dimap_scores, lamp_scores
from tests.conftest import make_tiny_swin


def test_account_of_an_unpruned_model_and_of_no_prunable_weights():
    model = make_tiny_swin()
    a = account(model, {}, img_size=32)
    assert a["prunable_weights"] == a["prunable_removed"] == 0 and a["prunable_removed_fraction"] == 0.0
    assert all(a["modules"][m]["kept_fraction"] == 1.0 for m in PRUNABLE_MODULES)
    assert _pct(3, 0) == 0.0 and _pct(1, 4) == 25.0


def test_account_module_flops_are_the_sum_of_their_layers_and_precomputed_flops_are_used():
    model = make_tiny_swin()
    masks = compute_masks(model, "dimap", 0.3)
    a = account(model, masks, img_size=32)
    for m in PRUNABLE_MODULES:
        assert a["modules"][m]["flops"] == sum(l["flops"] for l in a["layers"] if l["module"] == m) > 0
    assert a["flops_prunable"] == sum(l["flops"] for l in a["layers"])
    doubled = {k: 2 * v for k, v in flops_by_module(model, 32).items()}
    b = account(model, masks, img_size=32, flops=doubled)
    assert b["flops_dense"] == 2 * a["flops_dense"] and b["flops_prunable"] == 2 * a["flops_prunable"]


def test_account_of_a_one_channel_model_traces_with_its_channels():
    model = make_tiny_swin(in_chans=1)
    a = account(model, compute_masks(model, "dimap", 0.3), img_size=32, in_chans=1)
    assert a["flops_dense"] > 0


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, True, "0.5", None])
def test_check_ratio_refuses_in_one_sentence(bad):
    with pytest.raises(UserError, match=r"^prune\.ratio=.* is not a share in \[0, 1\): pass e\.g\. prune\.ratio=0\.55$"):
        check_ratio(bad)
    assert check_ratio(0) == 0.0 and check_ratio(0.999) == 0.999


def test_check_method_lists_the_criteria():
    with pytest.raises(UserError) as e:
        check_method("lamp")
    assert str(e.value) == "prune.method='lamp' is unknown: use one of dimap, single_module, uniform, global_magnitude, wanda, wanda_module, sparsegpt"


class Odd(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.big = nn.Parameter(torch.ones(300, 200, dtype=dtype).t())  # not contiguous: one tensor, not chunks
        self.flat = nn.Parameter(torch.ones(40000, dtype=dtype))        # contiguous: 3 chunks
        self.kept = nn.Parameter(torch.ones(10, dtype=dtype))            # fully kept: left out of the hot path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fixed_mask_hot_path_chunks_casts_and_skips_fully_kept_layers(dtype):
    model = Odd(dtype)
    g = torch.Generator().manual_seed(0)
    masks = {"big": torch.rand(200, 300, generator=g) > 0.5, "flat": torch.rand(40000, generator=g) > 0.5,
             "kept": torch.ones(10, dtype=torch.bool)}
    fixed = FixedMask(model, masks)
    assert all(f.dtype == p.dtype and f.device == p.device for f, p in zip(fixed.factors, fixed.params))
    assert len(fixed._targets) == 1 + 3 and max(t.numel() for t in fixed._targets[1:]) <= FixedMask.CHUNK
    assert model.kept.data_ptr() not in {t.data_ptr() for t in fixed._targets}
    fixed.apply()
    assert fixed.violations() == 0 and torch.equal(model.big, masks["big"].to(dtype))
    assert torch.equal(model.kept, torch.ones(10, dtype=dtype))


def test_fixed_mask_with_nothing_pruned_is_a_no_op():
    model = Odd()
    fixed = FixedMask(model, {"flat": torch.ones(40000, dtype=torch.bool)})
    fixed.apply()
    fixed.mask_grads()
    assert fixed.violations() == 0 and torch.equal(model.flat, torch.ones(40000))


def test_masks_from_state_dict_refusal_names_the_fix():
    with pytest.raises(UserError, match="^this state dict lacks the prunable weight 'layers.0.blocks.0.attn.qkv.weight' "
                                        "of SwinTransformer: pass a checkpoint of this architecture$"):
        masks_from_state_dict({"head.fc.weight": torch.zeros(2)}, make_tiny_swin())


def test_mask_checksum_depends_on_shape_not_on_storage_dtype():
    name = "layers.0.blocks.0.attn.qkv.weight"
    bits = torch.tensor([[True, False, True], [False, True, True]])
    assert mask_checksum({name: bits}) == mask_checksum({name: bits.float()})  # a 0/1 float mask is the same mask
    assert mask_checksum({name: bits}) != mask_checksum({name: bits.reshape(3, 2)})


def test_lamp_scores_of_small_weights_and_zeros():
    w = 1e-3 * torch.randn(20, 10, generator=torch.Generator().manual_seed(0))  # every tail sum far below 1
    torch.testing.assert_close(lamp_scores(w), dimap_scores(w), rtol=1e-12, atol=0)
    assert torch.equal(lamp_scores(torch.zeros(5)), torch.zeros(5, dtype=torch.float64))


def test_compare_masks_sums_layers_and_refuses_different_names():
    q0, q1 = "layers.0.blocks.0.attn.qkv.weight", "layers.1.blocks.0.attn.qkv.weight"
    a = {q0: torch.tensor([True, True, False, False]), q1: torch.tensor([True, False])}
    b = {q0: torch.tensor([True, False, True, False]), q1: torch.tensor([True, False])}
    module = {q0: "QKV-M", q1: "QKV-M"}
    c = compare_masks(a, b, module)
    assert c["overall"]["same_bits"] == pytest.approx(4 / 6) and c["overall"]["iou_kept"] == pytest.approx(2 / 4)
    assert c["overall"]["kept_fraction_checkpoint"] == pytest.approx(3 / 6)
    assert c["layers"][q1]["iou_kept"] == 1.0
    none_kept = compare_masks({q1: torch.tensor([False, False])}, {q1: torch.tensor([False, False])}, module)
    assert none_kept["overall"]["iou_kept"] == 1.0  # nothing kept on either side: the same (empty) set
    with pytest.raises(ValueError, match=f"different weights, e.g. '{q1}'"):
        compare_masks(a, {q0: b[q0]}, module)


def test_save_pruned_makes_parent_folders_and_keeps_non_json_metadata(tmp_path):
    model = make_tiny_swin()
    masks = compute_masks(model, "dimap", 0.3)
    path = save_pruned(model, masks, tmp_path / "a" / "b", {"ratio": 0.3, "weights": tmp_path})  # a Path value
    assert path == tmp_path / "a" / "b" / "model.safetensors" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["masks.safetensors", "model.safetensors"]
    state, loaded, meta = read_pruned(path)
    assert meta == {"ratio": 0.3, "weights": str(tmp_path)}
    exact = {k: v.clone() for k, v in masks.items()}
    k0 = next(iter(exact))
    exact[k0].view(-1)[0] = False  # kept in the file, so not recoverable from zeros: the mask file must win
    save_pruned(model, exact, tmp_path / "c", {})
    assert torch.equal(read_pruned(tmp_path / "c")[1][k0], exact[k0])


def test_read_pruned_without_metadata_and_a_corrupt_file(tmp_path):
    from safetensors.torch import save_file
    model = make_tiny_swin()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="names no architecture in its metadata"):  # no metadata: {} read, refused
        read_pruned(tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=r"use masks_from_state_dict\(state_dict, model\) with the model it belongs to$"):
        read_pruned(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.safetensors is not a readable pruned model .*: write it again"):
        read_pruned(tmp_path / "bad.safetensors")


def test_a_model_without_swin_layers_is_refused_naming_its_class():
    from dimap import prunable_weights
    with pytest.raises(UserError, match=r"^Linear .*: DIMAP prunes vision transformers built from timm's attention "
                                        r"and MLP blocks; see docs/families.md$"):
        prunable_weights(nn.Linear(3, 3))


def test_scores_are_float64_and_reference_masks_bool():
    from dimap.pruning import reference
    from dimap.pruning.scores import magnitude_scores
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    assert magnitude_scores(w).dtype == dimap_scores(w).dtype == lamp_scores(w).dtype == torch.float64
    from dimap import prunable_weights
    weights = prunable_weights(make_tiny_swin())
    for name, criterion in reference.CRITERIA.items():
        masks = criterion(weights, 0.3)
        assert all(m.dtype == torch.bool for m in masks.values()), name


def test_inspect_checkpoint_measures_the_removed_share_not_the_kept_one(tmp_path):
    from dimap.pruning.inspect_checkpoint import inspect_checkpoint
    from tests.pruning.test_inspect import KWARGS
    dense = make_tiny_swin(seed=3, **KWARGS)
    torch.save(dense.state_dict(), tmp_path / "dense.pth")
    masks = compute_masks(dense, "dimap", 0.3)  # not 0.5: 0.3 tells the removed share from the kept one
    from dimap import apply_masks
    apply_masks(dense, masks)
    torch.save(dense.state_dict(), tmp_path / "pruned.pth")
    cfg = {"name": "swin_tiny_patch4_window7_224", "kwargs": KWARGS, "weights": str(tmp_path / "pruned.pth")}
    _, found, comparison = inspect_checkpoint(cfg, str(tmp_path / "dense.pth"))  # default method: dimap
    removed = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert comparison["ratio"] == removed == pytest.approx(0.3, abs=1e-3)
    assert comparison["dense_weights"] == str(tmp_path / "dense.pth") and comparison["method"] == "dimap"
    assert comparison["overall"]["iou_kept"] == 1.0 and all(torch.equal(found[n], masks[n]) for n in masks)
