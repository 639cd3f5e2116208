"""scripts/make_tables.py: rows matched by content, paper and ours never mixed, dashes where we have no number."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_tables  # noqa: E402

DENSE = {"swin_t": (28288354, 4.509e9), "swin_b": (87768224, 15.468e9)}


def write_run(runs: Path, folder: str, model: str, method: str, ratio: float, epochs=None, top1=None, top5=None,
              weights="hub", sparse_pct=40.0):
    total, flops = DENSE[model]
    removed = ratio * 0.95 * total
    s = {"model_short": model, "method": method, "ratio": ratio, "weights": weights, "params_total": total,
         "params_nonzero": total - removed, "params_reduction_pct": 100 * removed / total, "flops_dense": flops,
         "flops_paper": flops * (1 - ratio * 0.95), "flops_paper_reduction_pct": 95 * ratio,
         "flops_sparse": flops * (1 - sparse_pct / 100), "flops_sparse_reduction_pct": sparse_pct,
         "git_commit": "0123456789abcdef"}
    if epochs is not None:
        s["epochs"] = epochs
    if top1 is not None:
        s.update(top1=top1, top5=top5)
    (runs / folder).mkdir(parents=True)
    (runs / folder / "summary.json").write_text(json.dumps(s))


def read_md(path: Path) -> dict[tuple, dict]:
    """Markdown table rows keyed by their first two cells."""
    lines = [l for l in path.read_text().splitlines() if l.startswith("| ")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [dict(zip(headers, (c.strip() for c in l.strip("|").split("|")))) for l in lines[1:]]
    return {(r[headers[0]], r[headers[1]]): r for r in rows}


@pytest.fixture
def tables(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "table1/swin_t_dense", "swin_t", "dimap", 0.0, epochs=0, top1=81.50, top5=95.60)
    write_run(runs, "table1/swin_t_dimap3", "swin_t", "dimap", 0.55, epochs=30, top1=80.00, top5=95.00)
    write_run(runs, "prune_only/table1/swin_t_dimap1", "swin_t", "dimap", 0.15, weights="random")
    # an evaluation without finetuning at DIMAP2's ratio: must NOT fill Table 1's (finetuned) DIMAP2 accuracy
    write_run(runs, "elsewhere/swin_t_r035_eval", "swin_t", "dimap", 0.35, epochs=0, top1=70.0, top5=90.0)
    write_run(runs, "table3/swin_b_dimap_50", "swin_b", "dimap", 0.524, epochs=0, top1=77.00, top5=93.0)
    write_run(runs, "table3/swin_b_uniform_50", "swin_b", "uniform", 0.524, epochs=0, top1=14.00, top5=30.0)
    write_run(runs, "table4/swin_t_single_module", "swin_t", "single_module", 0.55, epochs=30, top1=79.50, top5=94.8)
    write_run(runs, "inspect/authors", "swin_t", "none", 0.55)  # inspect runs match no row
    make_tables.main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--paper", str(ROOT / "results/paper")])
    return tmp_path / "out"


def test_table1_ours_next_to_paper(tables):
    t = read_md(tables / "table1.md")
    d3 = t[("Swin-T", "DIMAP3")]
    assert (d3["Top-1 paper"], d3["Top-1 ours"], d3["Δ top-1"]) == ("80.35", "80.00", "-0.35")
    assert (d3["Top-1 drop paper"], d3["Top-1 drop ours"], d3["Top-5 drop ours"]) == ("0.81", "1.50", "0.60")
    assert d3["Params M paper"] == "14.0" and d3["Params M ours"] != "14.0" and d3["Sparse −% ours"] == "40.0"
    dense = t[("Swin-T", "dense")]
    assert (dense["Top-1 paper"], dense["Top-1 ours"], dense["Top-1 drop ours"]) == ("81.16", "81.50", "–")
    assert dense["Params M ours"] == "28.29" and dense["Params −% ours"] == "–"
    d1 = t[("Swin-T", "DIMAP1")]  # prune-only: counts, no accuracy
    assert d1["Top-1 ours"] == d1["Top-5 ours"] == d1["Δ top-1"] == d1["Top-1 drop ours"] == "–"
    assert d1["Params −% ours"] == "14.2" and d1["Top-1 paper"] == "81.17"
    d2 = t[("Swin-T", "DIMAP2")]  # only an epochs=0 run at that ratio: counts yes, accuracy no
    assert d2["Top-1 ours"] == "–" and d2["Params −% ours"] == "33.2"
    for variant in ("dense", "DIMAP1", "DIMAP2", "DIMAP3"):  # no Swin-S run at all
        s = t[("Swin-S", variant)]
        assert s["Top-1 ours"] == s["Params M ours"] == s["FLOPs G ours"] == "–" and s["Top-1 paper"] != "–"
    b3 = t[("Swin-B", "DIMAP3")]  # Swin-B's only runs are Table 3 evaluations at another ratio
    assert b3["Top-1 ours"] == "–" and b3["Top-1 drop ours"] == "–" and b3["Top-1 drop paper"] == "0.20"
    text = (tables / "table1.md").read_text()
    assert "`prune_only/table1/swin_t_dimap1` (random weights" in text and "Swin-S DIMAP1: no run" in text


def test_table3_uses_evaluations_without_finetuning(tables):
    t = read_md(tables / "table3.md")
    b50 = t[("50", "Swin-B")]
    assert (b50["DIMAP paper"], b50["DIMAP ours"], b50["Δ DIMAP"]) == ("78.13", "77.00", "-1.13")
    assert (b50["Uniform paper"], b50["Uniform ours"], b50["Gain ours"]) == ("15.26", "14.00", "+63.00")
    assert b50["r ours"] == "0.5240"
    t38 = t[("38", "Swin-T")]
    assert (t38["Gain paper (printed)"], t38["Gain paper (recomputed)"]) == ("+4.79", "+6.48")
    assert t38["DIMAP ours"] == "–" and t38["Params −% ours"] == "–"


def test_table4_single_vs_multiple(tables):
    t = read_md(tables / "table4.md")
    row = t[("Swin-T", "DIMAP3")]
    assert (row["Multiple modules ours"], row["Single module ours"], row["Difference ours"]) == ("80.00", "79.50", "+0.50")
    assert row["Difference paper"] == "+0.23"
    assert t[("Swin-B", "DIMAP3")]["Single module ours"] == "–"


def test_latex_is_written_and_escaped(tables):
    tex = (tables / "table1.tex").read_text()
    assert "\\toprule" in tex and "Params --\\% ours" in tex and "$\\Delta$ top-1" in tex
    assert " & 80.00 & " in tex
    for name in ("table3", "table4"):
        assert (tables / f"{name}.tex").read_text().count("\\\\") >= 3


def test_empty_runs_dir_gives_paper_only_tables(tmp_path):
    make_tables.main(["--runs", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    t = read_md(tmp_path / "out" / "table1.md")
    assert all(r["Top-1 ours"] == "–" and r["Params M ours"] == "–" for r in t.values())
    assert t[("Swin-B", "DIMAP3")]["Params −% paper"] == "52.5"
