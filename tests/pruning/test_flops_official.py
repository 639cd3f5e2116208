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


def official_swin_flops(img, patch, embed, depths, heads, window, classes, mlp_ratio=4.0, in_chans=3, patch_norm=True):
    """An independent transcription of the official code's count (microsoft/Swin-Transformer, models/
    swin_transformer.py: PatchEmbed/WindowAttention/SwinTransformerBlock/PatchMerging/SwinTransformer.flops()),
    written from the model's configuration, never from a built module. Generalised to rectangular images and
    windows the way timm builds them: a window side larger than its stage's side shrinks to it (official: square,
    window = min(resolution) when the resolution is not larger than the window)."""
    (ih, iw), (wh, ww) = (img, img) if isinstance(img, int) else img, (window, window) if isinstance(window, int) else window
    ho, wo = ih // patch, iw // patch
    flops = ho * wo * embed * in_chans * patch * patch + (ho * wo * embed if patch_norm else 0)
    for i, (depth, nh) in enumerate(zip(depths, heads)):
        dim, h, w = embed * 2 ** i, ho // 2 ** i, wo // 2 ** i
        n = min(wh, h) * min(ww, w)  # tokens per window
        attention = n * dim * 3 * dim + nh * n * (dim // nh) * n + nh * n * n * (dim // nh) + n * dim * dim
        flops += depth * (dim * h * w + (h * w / n) * attention + 2 * h * w * dim * dim * mlp_ratio + dim * h * w)
        if i < len(depths) - 1:  # official PatchMerging at the end of a stage
            flops += h * w * dim + (h // 2) * (w // 2) * 4 * dim * 2 * dim
    features = embed * 2 ** (len(depths) - 1)
    return flops + features * ho * wo // 2 ** len(depths) + features * classes


SWIN_CONFIGS = {"swin_tiny_patch4_window7_224": dict(embed=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24)),
                "swin_small_patch4_window7_224": dict(embed=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24)),
                "swin_base_patch4_window7_224": dict(embed=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32))}


@pytest.mark.parametrize("name", list(SWIN_CONFIGS))
def test_total_equals_the_official_code_exactly(name):
    """Every term, not only the rounded total: the official count of Swin-T/S/B at 224, equal to the FLOP."""
    with torch.device("meta"):
        model = timm.create_model(name)
    total = flops_official(model)["total"]
    assert total == official_swin_flops(224, 4, window=7, classes=1000, **SWIN_CONFIGS[name])
    assert isinstance(total, int)  # a count: summary.json shows 4494...848, not 4.49e9


TINY = dict(patch=2, embed=16, depths=(1, 1, 2, 1), heads=(1, 2, 2, 4))


@pytest.mark.parametrize("overrides, reference", [
    ({}, dict(img=32, window=4, classes=10)),
    ({"img_size": 64, "window_size": 8}, dict(img=64, window=8, classes=10)),
    ({"img_size": (32, 64)}, dict(img=(32, 64), window=4, classes=10)),  # h != w: catches h/w mix-ups
    ({"window_size": (4, 2)}, dict(img=32, window=(4, 2), classes=10)),  # Wh != Ww
    ({"num_classes": 0}, dict(img=32, window=4, classes=0)),  # no head: no head term
])
def test_total_equals_the_official_code_on_small_swins(overrides, reference):
    model = make_tiny_swin(**overrides)
    total = flops_official(model)["total"]
    assert total == official_swin_flops(**TINY, **reference) and isinstance(total, int)


def test_patch_embedding_without_norm():
    """The official patch_norm=False: no patch-norm term (timm always builds one; replaced here)."""
    model = make_tiny_swin()
    model.patch_embed.norm = torch.nn.Identity()
    assert flops_official(model)["total"] == official_swin_flops(**TINY, img=32, window=4, classes=10,
                                                                 patch_norm=False)


def test_account_official_reduction_is_removed_over_dense():
    model = make_tiny_swin()
    masks = compute_masks(model, "dimap", 0.3)
    a = account(model, masks, img_size=32)
    dense, paper = a["flops_official_dense"], a["flops_official_paper"]
    assert 0 < paper < dense
    assert a["flops_official_paper_reduction_pct"] == pytest.approx(100 * (dense - paper) / dense)


def test_account_of_a_model_without_the_official_count_leaves_its_columns_empty():
    """A model the official count does not cover still gets the three columns, each None (tables show them empty)."""
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=10)
    a = account(model, compute_masks(model, "dimap", 0.5), img_size=32)
    assert {k: a[k] for k in a if k.startswith("flops_official")} == {
        "flops_official_dense": None, "flops_official_paper": None, "flops_official_paper_reduction_pct": None}
