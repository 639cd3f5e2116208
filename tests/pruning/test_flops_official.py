"""flops_official: the official Swin code's analytic count, the one the paper's FLOPs column was computed with."""
import csv
from pathlib import Path

import pytest
import timm
import torch

from dimap import account, compute_masks, flops_by_module
from dimap.pruning.accounting import flops_official
from tests.conftest import make_tiny_swin

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper" / "table1.csv"
TIMM_NAMES = {"swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224",
              "swin_b": "swin_base_patch4_window7_224"}


@pytest.mark.parametrize("overrides", [{}, {"img_size": 64, "window_size": 8}])
def test_linear_layers_equal_fvcore_counts(overrides):
    """Each prunable linear layer's term (tokens x in x out) is exactly fvcore's count of that layer."""
    model = make_tiny_swin(**overrides)
    official, fvcore = flops_official(model), flops_by_module(model, overrides.get("img_size", 32))
    assert official["layers"] and set(official["layers"]) == set(compute_masks(model, "dimap", 0.0))
    for name, flops in official["layers"].items():
        assert flops == fvcore[name.removesuffix(".weight")], name
    # the analytic total counts fewer small ops than fvcore (no biases, softmax, GELU) but the same matmuls
    assert 0.9 < official["total"] / fvcore[""] < 1.0


@pytest.mark.parametrize("short", list(TIMM_NAMES))
def test_dense_totals_are_the_papers(short):
    """The paper's dense 4.5 / 8.7 / 15.4 G are this count rounded down to one decimal (fvcore's round up)."""
    with torch.device("meta"):
        model = timm.create_model(TIMM_NAMES[short])
    with open(PAPER) as f:
        paper = next(float(r["flops_g"]) for r in csv.DictReader(f) if r["model"] == short and r["variant"] == "dense")
    assert round(flops_official(model)["total"] / 1e9, 1) == paper


def test_account_reports_the_official_column():
    model = make_tiny_swin()
    masks = compute_masks(model, "dimap", 0.5)
    a, official = account(model, masks, img_size=32), flops_official(model)
    removed = a["prunable_removed_fraction"]
    assert a["flops_official_dense"] == official["total"]
    assert a["flops_official_paper"] == pytest.approx(official["total"] - removed * sum(official["layers"].values()))
    assert a["flops_official_paper_reduction_pct"] != pytest.approx(a["flops_paper_reduction_pct"])


def test_not_a_swin_gives_none():
    assert flops_official(torch.nn.Linear(3, 3)) is None


@pytest.mark.parametrize("short", list(TIMM_NAMES))
def test_table1_reductions_on_the_official_count(short):
    """Paper-style reductions on the official count are within 0.15 points of all nine of Table 1 (fvcore: 0.2)."""
    from dimap.pruning.modules import modules_of, prunable_weights
    from dimap.pruning.removal_count import n_removed
    with torch.device("meta"):
        model = timm.create_model(TIMM_NAMES[short])
    official, weights = flops_official(model), prunable_weights(model)
    sizes = [sum(weights[n].numel() for n in names) for names in modules_of(weights).values()]
    with open(PAPER) as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == short and r["variant"] != "dense"]
    for row in rows:
        r = sum(n_removed(n, float(row["ratio"])) for n in sizes) / sum(sizes)  # equal r in each module
        pct = 100 * r * sum(official["layers"].values()) / official["total"]
        assert abs(pct - float(row["flops_reduction_pct"])) < 0.15, row  # 7 of 9 equal at one decimal
