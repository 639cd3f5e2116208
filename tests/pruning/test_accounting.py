"""Parameter and FLOP accounting: fvcore's dense count, and the paper's Table 1 parameter column."""
import csv
from pathlib import Path

import pytest
import timm
import torch

from dimap import account, compute_masks, flops_by_module
from dimap.pruning.modules import MLP, PRJ, QKV, module_map
from dimap.pruning.removal_count import n_removed
from tests.conftest import make_tiny_swin

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper" / "table1.csv"  # transcribed from the paper
TIMM_NAMES = {"swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224",
              "swin_b": "swin_base_patch4_window7_224"}


def test_swin_t_dense_flops_match_fvcore_reference():
    flops = flops_by_module(timm.create_model(TIMM_NAMES["swin_t"]), 224)
    assert abs(flops[""] / 4.509e9 - 1) < 0.01
    assert flops["layers.0.blocks.0.attn.qkv"] == 3136 * 96 * 288  # tokens x in x out multiply-adds


def test_figures_are_consistent_on_a_tiny_model():
    model = make_tiny_swin()
    masks = compute_masks(model, "dimap", 0.3)  # not 0.5, which cannot tell r from 1 - r
    a = account(model, masks, img_size=32)
    total = sum(p.numel() for p in model.parameters())
    removed = sum(int((~m).sum()) for m in masks.values())
    module_of = module_map(model).get
    sizes = [sum(m.numel() for n, m in masks.items() if module_of(n) == mod) for mod in (QKV, PRJ, MLP)]
    assert removed == sum(n_removed(n, 0.3) for n in sizes)  # each module loses its own 30%
    assert a["params_total"] == total and a["params_nonzero"] == total - removed
    assert a["prunable_removed"] == removed
    assert a["prunable_removed_fraction"] == pytest.approx(removed / sum(sizes))
    assert a["params_reduction_pct"] == pytest.approx(100 * removed / total)
    assert a["flops_paper_reduction_pct"] == pytest.approx(100 * (1 - a["flops_paper"] / a["flops_dense"]))
    assert a["flops_sparse_reduction_pct"] == pytest.approx(100 * (1 - a["flops_sparse"] / a["flops_dense"]))
    for mod in (QKV, PRJ, MLP):
        m = a["modules"][mod]
        assert m["kept"] == sum(int(k.sum()) for n, k in masks.items() if module_of(n) == mod)
        assert m["kept_fraction"] == pytest.approx(m["kept"] / m["weights"])
    assert sum(l["weights"] for l in a["layers"]) == a["prunable_weights"] == sum(m.numel() for m in masks.values())
    # paper-style: r x prunable FLOPs removed; sparse: each layer by its own kept fraction
    assert a["flops_paper"] == pytest.approx(a["flops_dense"] - a["prunable_removed_fraction"] * a["flops_prunable"])
    per_layer = sum(l["flops"] * (1 - l["kept"] / l["weights"]) for l in a["layers"])
    assert a["flops_sparse"] == pytest.approx(a["flops_dense"] - per_layer)
    assert a["flops_sparse"] != pytest.approx(a["flops_paper"])  # tokens per layer differ across stages
    assert a["modules"]["MLP-M"]["weights"] == sum(l["weights"] for l in a["layers"] if l["module"] == "MLP-M")


def test_unpruned_model_reports_no_reduction():
    model = make_tiny_swin()
    a = account(model, compute_masks(model, "dimap", 0.0), img_size=32)
    assert a["params_reduction_pct"] == 0 and a["flops_paper"] == a["flops_sparse"] == a["flops_dense"]


def paper_rows():
    with open(PAPER) as f:
        return [r for r in csv.DictReader(f) if r["variant"] != "dense"]


@pytest.mark.slow
@pytest.mark.parametrize("model_short", ["swin_t", "swin_s", "swin_b"])
def test_table1_parameter_and_flop_columns(model_short):
    """Random weights give the paper's parameter column: each module loses the same share, whatever the weights."""
    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAMES[model_short])
    flops = flops_by_module(model, 224)
    rows = [r for r in paper_rows() if r["model"] == model_short]
    assert len(rows) == 3
    for row in rows:
        a = account(model, compute_masks(model, "dimap", float(row["ratio"])), 224, flops=flops)
        # The paper's M column is not rounded consistently (14.055 -> 14.0 but 23.695 -> 23.7); its
        # reduction column is, to one decimal, for all nine rows.
        assert abs(a["params_nonzero"] / 1e6 - float(row["params_m"])) < 0.06, row
        assert round(a["params_reduction_pct"], 1) == float(row["params_reduction_pct"]), row
        assert abs(a["flops_paper_reduction_pct"] - float(row["flops_reduction_pct"])) <= 0.2, row
        assert round(a["flops_paper"] / 1e9, 1) == pytest.approx(float(row["flops_g"]), abs=0.15), row
