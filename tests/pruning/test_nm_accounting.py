"""N:M accounting: the FLOPs an N:M kernel executes and the compressed 16-bit weight size."""
import math

import pytest

from dimap import account, compute_masks, flops_by_module, prunable_weights
from dimap.report import format_table, prune_summary
from tests.conftest import make_tiny_swin


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_kernel_flops_and_compressed_bytes_from_the_two_four_layers(ratio):
    model = make_tiny_swin()
    masks = compute_masks(model, "dimap", ratio, pattern="2:4")
    flops = flops_by_module(model, 32)
    acc = account(model, masks, 32, flops=flops, pattern=(2, 4))
    nm = [n for n, m in masks.items() if not bool(m.all())]
    layer_flops = sum(flops[n.removesuffix(".weight")] for n in nm)
    assert acc["flops_nm_kernel"] == flops[""] - layer_flops / 2
    total = sum(p.numel() for p in model.parameters())
    numel = sum(masks[n].numel() for n in nm)
    # 2:4 in fp16/bf16: half the values (2 bytes) + a 2-bit index per kept value = 9/16 of the dense bytes
    assert acc["weight_bytes_16bit_nm"] == 2 * (total - numel) + numel * 9 // 8
    assert acc["weight_bytes_16bit_dense"] == 2 * total and acc["nm_layers"] == len(nm)
    assert {l["kind"] for l in acc["layers"]} == ({"2:4"} if ratio == 0.5 else {"2:4", "dense"})
    table = format_table(prune_summary({"name": "x"}, "dimap", ratio, acc))
    assert f"{len(nm)} layers N:M" in table and "16-bit weights" in table


def test_unstructured_masks_are_not_counted_as_n_of_m():
    model = make_tiny_swin()
    masks = compute_masks(model, "dimap", 0.5)  # 50% removed, but not 2 of every 4
    acc = account(model, masks, 32, pattern=(2, 4))
    assert acc["nm_layers"] == 0 and acc["flops_nm_kernel"] == acc["flops_dense"]
    assert "flops_nm_kernel" not in account(model, masks, 32)


def test_other_n_of_m_compressed_size_uses_ceil_log2_m_bits_per_kept_value():
    model = make_tiny_swin()
    masks = compute_masks(model, "uniform", 0.875, pattern="1:8")  # (M-N)/M: every layer 1:8
    acc = account(model, masks, 32, pattern=(1, 8))
    numel = sum(w.numel() for w in prunable_weights(model).values())
    kept = numel // 8
    total = sum(p.numel() for p in model.parameters())
    assert acc["weight_bytes_16bit_nm"] == 2 * (total - numel) + 2 * kept + sum(
        math.ceil(m.numel() // 8 * 3 / 8) for m in masks.values())
