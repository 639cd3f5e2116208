"""scripts/make_tables.py: a cell takes only its row's run, paper and ours never mixed, dashes where we have none."""
import copy
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_tables  # noqa: E402
from table_runs import recipe  # noqa: E402

DENSE = {"swin_t": (28288354, 4.509e9, 4.494e9), "swin_b": (87768224, 15.468e9, 15.438e9)}


def write_run(runs: Path, folder: str, experiment: str, *, top1=None, top5=None, weights="hub", prune_only=False,
              set_=(), pruning=None, when="2026-01-01T00:00:00+00:00", sparse_pct=40.0, legacy=False):
    """A summary.json as train.py (or prune.py, `prune_only`) writes it for the recipe of `experiment`, changed by
    `set_` (("train.lr", 1e-4), ...). FLOPs -%: paper-style fvcore 95 r, official 93 r, sparse `sparse_pct`."""
    config = copy.deepcopy(recipe(experiment))
    config["model"]["weights"] = weights
    for key, value in set_:
        *path, last = key.split(".")
        node = config
        for p in path:
            node = node[p]
        node[last] = value
    if prune_only:
        config = {k: config[k] for k in ("model", "prune", "output_dir")}
    model, ratio = config["model"]["short"], config["prune"]["ratio"]
    total, flops, official = DENSE[model]
    removed = ratio * 0.95 * total
    s = {"model_short": model, "method": config["prune"]["method"], "ratio": ratio, "weights": weights,
         "params_total": total, "params_nonzero": total - removed, "params_reduction_pct": 100 * removed / total,
         "flops_dense": flops, "flops_paper": flops * (1 - ratio * 0.95), "flops_paper_reduction_pct": 95 * ratio,
         "flops_official_dense": official, "flops_official_paper": official * (1 - ratio * 0.93),
         "flops_official_paper_reduction_pct": 93 * ratio, "flops_sparse": flops * (1 - sparse_pct / 100),
         "flops_sparse_reduction_pct": sparse_pct, "git_commit": "0123456789abcdef", "config": config,
         "finished_at": when}
    if not prune_only:
        s["epochs"] = config["train"]["epochs"]
        if not legacy:
            s["pruning"] = pruning or {"method": s["method"] if ratio else "none", "ratio": ratio,
                                       "weights_already_pruned": False}
    if top1 is not None:
        s.update(top1=top1, top5=top5)
    (runs / folder).mkdir(parents=True)
    (runs / folder / "summary.json").write_text(json.dumps(s))


def read_md(path: Path, key_cells: int = 2) -> dict[tuple, dict]:
    """Markdown table rows keyed by their first `key_cells` cells."""
    lines = [l for l in path.read_text().splitlines() if l.startswith("| ")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [dict(zip(headers, (c.strip() for c in l.strip("|").split("|")))) for l in lines[1:]]
    return {tuple(r[h] for h in headers[:key_cells]): r for r in rows}


def make(tmp_path, runs):
    make_tables.main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--paper", str(ROOT / "results/paper")])
    return tmp_path / "out"


@pytest.fixture
def tables(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "table1/swin_t_dense", "table1/swin_t_dense", top1=81.50, top5=95.60)
    write_run(runs, "table1/swin_t_dimap3", "table1/swin_t_dimap3", top1=80.00, top5=95.00)
    write_run(runs, "prune_only/table1/swin_t_dimap1", "table1/swin_t_dimap1", weights="random", prune_only=True)
    # DIMAP2's ratio without finetuning: not the (finetuned) row's run, so no accuracy, but its counts
    write_run(runs, "elsewhere/swin_t_r035_eval", "table1/swin_t_dimap2", top1=70.0, top5=90.0, set_=[("train.epochs", 0)])
    write_run(runs, "table3/swin_b_dimap_50", "table3/swin_b_dimap_50", top1=77.00, top5=93.0)
    write_run(runs, "table3/swin_b_uniform_50", "table3/swin_b_uniform_50", top1=14.00, top5=30.0)
    write_run(runs, "table3/swin_b_dimap_50_prunable", "table3/swin_b_dimap_50_prunable", top1=78.50, top5=94.0)
    write_run(runs, "table4/swin_t_single_module", "table4/swin_t_single_module", top1=79.50, top5=94.8)
    return make(tmp_path, runs)


def test_table1_ours_next_to_paper(tables):
    t = read_md(tables / "table1.md")
    d3 = t[("Swin-T", "DIMAP3")]
    assert (d3["Top-1 paper"], d3["Top-1 ours"], d3["Δ top-1"]) == ("80.35", "80.00", "-0.35")
    assert (d3["Top-1 drop paper"], d3["Top-1 drop ours"], d3["Top-5 drop ours"]) == ("0.81", "1.50", "0.60")
    assert d3["Params M paper"] == "14.0" and d3["Params M ours"] != "14.0" and d3["Sparse −% ours"] == "40.0"
    dense = t[("Swin-T", "dense")]
    assert (dense["Top-1 paper"], dense["Top-1 ours"], dense["Top-1 drop ours"]) == ("81.16", "81.50", "–")
    assert dense["Params M ours"] == "28.29" and dense["Params −% ours"] == "–"
    assert (dense["FLOPs G ours (official)"], dense["FLOPs G ours (fvcore)"]) == ("4.49", "4.51")
    d1 = t[("Swin-T", "DIMAP1")]  # prune-only on random weights: counts, no accuracy, no sparse FLOPs
    assert d1["Top-1 ours"] == d1["Top-5 ours"] == d1["Δ top-1"] == d1["Top-1 drop ours"] == "–"
    assert d1["Params −% ours"] == "14.2" and d1["Top-1 paper"] == "81.17"
    assert d1["Sparse −% ours"] == d1["Sparse FLOPs G ours"] == "–"
    d2 = t[("Swin-T", "DIMAP2")]  # only an epochs=0 run at that ratio: counts yes, accuracy no
    assert d2["Top-1 ours"] == "–" and d2["Params −% ours"] == "33.2"
    for variant in ("dense", "DIMAP1", "DIMAP2", "DIMAP3"):  # no Swin-S run at all
        s = t[("Swin-S", variant)]
        assert s["Top-1 ours"] == s["Params M ours"] == s["FLOPs G ours (fvcore)"] == "–" and s["Top-1 paper"] != "–"
    b3 = t[("Swin-B", "DIMAP3")]  # Swin-B's only runs are Table 3 evaluations at another ratio
    assert b3["Top-1 ours"] == "–" and b3["Top-1 drop ours"] == "–" and b3["Top-1 drop paper"] == "0.20"
    text = (tables / "table1.md").read_text()
    assert "`prune_only/table1/swin_t_dimap1` (random weights" in text and "Swin-S DIMAP1: no run" in text
    assert "Swin-T DIMAP2: refused `elsewhere/swin_t_r035_eval`: 0 epochs, the recipe has 30" in text


def test_flops_columns_are_not_swapped(tables):
    """The paper's FLOPs -% sits under 'paper', our official count under 'ours (official)', fvcore's under fvcore."""
    d3 = read_md(tables / "table1.md")[("Swin-T", "DIMAP3")]
    assert (d3["FLOPs G paper"], d3["FLOPs −% paper"]) == ("2.2", "50.8")  # results/paper/table1.csv
    assert d3["FLOPs −% ours (official)"] == f"{93 * 0.55:.1f}" and d3["FLOPs −% ours (fvcore)"] == f"{95 * 0.55:.1f}"
    assert d3["FLOPs G ours (official)"] == f"{4.494 * (1 - 0.55 * 0.93):.2f}"
    assert (d3["Params M paper"], d3["Params −% paper"]) == ("14.0", "50.3")


def test_a_random_weights_smoke_run_fills_no_cell(tmp_path):
    """The reported bug: a 1-epoch random-weights run in another folder became Swin-T DIMAP3's top-1."""
    runs = tmp_path / "runs"
    write_run(runs, "smoke/swin_t", "table1/swin_t_dimap3", top1=0.12, top5=0.5, weights="random",
              set_=[("train.epochs", 1)])
    write_run(runs, "table1/swin_t_dimap2", "table1/swin_t_dimap2", top1=0.2, top5=0.6, weights="random")  # own folder
    t = read_md(make(tmp_path, runs) / "table1.md")
    assert t[("Swin-T", "DIMAP3")]["Top-1 ours"] == t[("Swin-T", "DIMAP2")]["Top-1 ours"] == "–"
    text = (tmp_path / "out" / "table1.md").read_text()
    assert "Swin-T DIMAP3: refused `smoke/swin_t`: random weights" in text
    assert "Swin-T DIMAP2: refused `table1/swin_t_dimap2`: random weights" in text


def test_an_inspection_run_fills_no_cell(tmp_path):
    """The README's old recipe for the authors' file (experiment=table1/swin_t_dense model.weights=dimap3.pth) is
    an evaluation of an already pruned file: not our dense baseline. Nor is a run recorded before runs said so."""
    runs = tmp_path / "runs"
    write_run(runs, "inspect/swin_t_dimap3_eval", "table1/swin_t_dense", top1=80.3, top5=95.2,
              weights="/ckpt/swin_t_dimap3.pth", pruning={"method": "none", "ratio": 0.55, "weights_already_pruned": True})
    write_run(runs, "old/swin_t_dense", "table1/swin_t_dense", top1=80.4, top5=95.2, legacy=True)
    write_run(runs, "table1/swin_t_dimap3", "table1/swin_t_dimap3", top1=80.0, top5=95.0)
    t = read_md(make(tmp_path, runs) / "table1.md")
    assert t[("Swin-T", "dense")]["Top-1 ours"] == "–" and t[("Swin-T", "DIMAP3")]["Top-1 drop ours"] == "–"
    text = (tmp_path / "out" / "table1.md").read_text()
    assert "refused `inspect/swin_t_dimap3_eval`: an inspection of an already pruned file" in text
    assert "refused `old/swin_t_dense`: recorded before evaluation runs said what they evaluated" in text


@pytest.mark.parametrize("own_is_newer", [False, True])
def test_the_newest_qualifying_run_wins(tmp_path, own_is_newer):
    runs = tmp_path / "runs"
    old, new = "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"
    write_run(runs, "table1/swin_t_dimap3", "table1/swin_t_dimap3", top1=80.0, top5=95.0, when=new if own_is_newer else old)
    write_run(runs, "rerun/swin_t_dimap3", "table1/swin_t_dimap3", top1=80.4, top5=95.1, when=old if own_is_newer else new,
              set_=[("train.batch_size", 64), ("train.accum_steps", 2)])  # another split of the same recipe
    t = read_md(make(tmp_path, runs) / "table1.md")
    assert t[("Swin-T", "DIMAP3")]["Top-1 ours"] == ("80.00" if own_is_newer else "80.40")


@pytest.mark.parametrize("change, reason", [
    (("train.lr", 1e-4), "another training recipe (train.lr)"),
    (("data.crop_pct", 0.9), "other evaluation data (data.crop_pct)"),
    (("model.kwargs", {"depths": [1, 1, 1, 1]}), "another architecture (model.kwargs)"),
    (("train.max_steps_per_epoch", 2), "another training recipe (train.max_steps_per_epoch)"),
])
def test_another_recipe_elsewhere_is_refused(tmp_path, change, reason):
    runs = tmp_path / "runs"
    write_run(runs, "elsewhere/run", "table1/swin_t_dimap3", top1=80.4, top5=95.1, set_=[change])
    t = read_md(make(tmp_path, runs) / "table1.md")
    assert t[("Swin-T", "DIMAP3")]["Top-1 ours"] == "–"
    assert f"Swin-T DIMAP3: refused `elsewhere/run`: {reason}" in (tmp_path / "out" / "table1.md").read_text()


def test_table3_shows_both_readings(tables):
    t = read_md(tables / "table3.md", key_cells=3)
    b50 = t[("50", "Swin-B", "of all params")]
    assert (b50["DIMAP paper"], b50["DIMAP ours"], b50["Δ DIMAP"]) == ("78.13", "77.00", "-1.13")
    assert (b50["Uniform paper"], b50["Uniform ours"], b50["Gain ours"]) == ("15.26", "14.00", "+63.00")
    assert b50["r ours"] == "0.5240"
    p50 = t[("50", "Swin-B", "of prunable weights")]
    assert (p50["r ours"], p50["DIMAP paper"], p50["DIMAP ours"], p50["Uniform ours"]) == ("0.5000", "78.13", "78.50", "–")
    t38 = t[("38", "Swin-T", "of all params")]
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
    t = read_md(make(tmp_path, tmp_path / "none") / "table1.md")
    assert all(r["Top-1 ours"] == "–" and r["Params M ours"] == "–" for r in t.values())
    assert t[("Swin-B", "DIMAP3")]["Params −% paper"] == "52.5"


def test_wandb_tables_offline(tables, tmp_path, monkeypatch):
    """--wandb logs the same cells as the Markdown in one offline run of job_type "tables"; read it back."""
    import wandb
    calls, init = [], wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or init(**kw))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no key, no WANDB_MODE: offline by itself
    monkeypatch.delenv("WANDB_MODE", raising=False)
    runs = tmp_path / "runs"
    make_tables.main(["--runs", str(runs), "--out", str(tmp_path / "out2"), "--paper", str(ROOT / "results/paper"),
                      "--wandb", f"logger.dir={tmp_path / 'wb'}", "logger.project=dimap-test"])
    assert len(calls) == 1 and calls[0]["job_type"] == "tables" and calls[0]["mode"] == "offline"
    [run_dir] = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    [table_file] = (run_dir / "files" / "media" / "table").glob("table1_*.table.json")
    logged = json.loads(table_file.read_text())
    row = next(r for r in logged["data"] if r[:2] == ["Swin-T", "DIMAP3"])
    cells = dict(zip(logged["columns"], row))
    md = read_md(tmp_path / "out2" / "table1.md")[("Swin-T", "DIMAP3")]
    assert cells == md and cells["Top-1 ours"] == "80.00" and cells["Top-1 paper"] == "80.35"
    assert len(list((run_dir / "files" / "media" / "table").glob("table[134]_*.table.json"))) == 3


def test_wandb_command_runs_as_the_readme_types_it(tmp_path):
    """`python scripts/make_tables.py --wandb` from a fresh clone (no pip install -e): the script finds dimap itself."""
    import os
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts/make_tables.py"), "--runs", str(tmp_path / "none"),
                        "--out", str(tmp_path / "out"), "--wandb", f"logger.dir={tmp_path}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "out" / "table1.md").exists()


def test_the_committed_runs_rebuild_the_committed_tables(tmp_path):
    """Rebuilding from results/runs gives results/tables byte for byte: a config key added since the runs were
    recorded (prune.pattern, say) must not turn the committed runs away from their cells."""
    make_tables.main(["--runs", str(ROOT / "results/runs"), "--out", str(tmp_path), "--paper",
                      str(ROOT / "results/paper")])
    committed = sorted(p.name for p in (ROOT / "results/tables").iterdir() if p.suffix in (".md", ".tex"))
    assert committed and committed == sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".md", ".tex"))
    for name in committed:
        assert (tmp_path / name).read_text() == (ROOT / "results/tables" / name).read_text(), name
