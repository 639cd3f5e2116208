"""Tables 1, 3 and 4 of the paper next to ours, as Markdown and LaTeX, and as wandb.Tables with --wandb.

    python scripts/make_tables.py [--runs results/runs] [--paper results/paper] [--out results/tables]
    python scripts/make_tables.py --wandb [logger.project=dimap logger.mode=offline ...]   # conf/tables.yaml

Reads every summary.json under --runs (written by prune.py or train.py) and the paper's numbers from
--paper/table{1,3,4}.csv, and writes table{1,3,4}.{md,tex} to --out, with baselines.{md,tex} (beyond the paper:
DIMAP beside Wanda and SparseGPT, scripts/table_baselines.py). Each row is an experiment file
(conf/experiment/tableN/ROW.yaml); which run may fill its cells is decided by scripts/table_runs.py: only the
row's own run (its whole recipe, pretrained weights, never an inspection) gives accuracy, the newest such run
wins, and every refused candidate is named in the notes. Paper columns only ever hold the paper's numbers, ours
only ours; drops are against OUR measured dense baseline (table1/*_dense). Sparse FLOPs measured on random
weights are left empty (they depend on the weights). With --wandb the same cells are logged as wandb.Tables in
one run of job_type "tables" (offline without WANDB_API_KEY; under logger.dir, else $WANDB_DIR, else
outputs/tables); the logger section of
conf/tables.yaml, overridden by trailing key=value arguments, says where.
"""
import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # dimap, for --wandb and overrides, without pip install -e
from table_runs import find_run, load_runs, recipe, row_of  # noqa: E402
from table_baselines import NOTES as BASELINE_NOTES, TITLE as BASELINE_TITLE, table_baselines  # noqa: E402

MODELS = ("swin_t", "swin_s", "swin_b")
NAMES = {"swin_t": "Swin-T", "swin_s": "Swin-S", "swin_b": "Swin-B"}
READINGS = (("", "of all params"), ("_prunable", "of prunable weights"))  # Table 3's label, both readings
DASH = "–"
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- formatting
def num(x, digits=2, signed=False):
    if x is None or x == "":
        return DASH
    return f"{float(x):+.{digits}f}" if signed else f"{float(x):.{digits}f}"


def diff(ours, paper, digits=2):
    return DASH if ours is None or paper in (None, "") else num(float(ours) - float(paper), digits, signed=True)


def paper_float(x):
    return None if x in (None, "") else float(x)


def pct(run, key, digits=1):
    return DASH if run is None or run.get(key) is None else num(run[key], digits)


def giga(run, key):
    return DASH if run is None or run.get(key) is None else num(run[key] / 1e9)


def sparse_pct(run):
    """Sparse FLOPs depend on the weights: none from a run on random weights."""
    return DASH if run is None or run.get("weights") == "random" else pct(run, "flops_sparse_reduction_pct")


def ours_counts(run, dense=False):
    """Our params (M, -%), paper-style FLOPs on the official count (G, -%) and on fvcore's (G, -%), sparse FLOPs
    (G, -%); dashes without a run. A dense row shows the dense totals and no reductions."""
    if run is None:
        return [DASH] * 8
    if dense:
        return [num(run["params_total"] / 1e6), DASH, giga(run, "flops_official_dense"), DASH,
                giga(run, "flops_dense"), DASH, giga(run, "flops_dense"), DASH]
    random = run.get("weights") == "random"
    return [num(run["params_nonzero"] / 1e6), pct(run, "params_reduction_pct"), giga(run, "flops_official_paper"),
            pct(run, "flops_official_paper_reduction_pct"), giga(run, "flops_paper"), pct(run, "flops_paper_reduction_pct"),
            DASH if random else giga(run, "flops_sparse"), sparse_pct(run)]


def _commit(run) -> str:
    sha = str(run.get("git_commit"))
    return sha[:12] + ("+dirty" if sha.endswith("+dirty") else "")


def source_note(label, acc_run, count_run, refused=()) -> list[str]:
    if count_run is None:
        lines = [f"{label}: no run"]
    else:
        weights = "random weights" if count_run.get("weights") == "random" else f"weights {count_run.get('weights')}"
        what = "accuracy and counts" if acc_run else "counts only (no accuracy)"
        lines = [f"{label}: {what} from `{count_run['folder']}` ({weights}, commit {_commit(count_run)})"
                 + ("; sparse FLOPs left empty (random weights)" if count_run.get("weights") == "random" else "")]
    return lines + [f"{label}: {r}" for r in refused]


# ---------------------------------------------------------------- tables
def dense_totals(runs, experiment):
    """Any run of the row's architecture: the dense totals (params, FLOPs) are the same in all of them."""
    model = recipe(experiment)["model"]
    same = [r for r in runs if all((r["config"].get("model") or {}).get(k) == model[k]
                                   for k in ("name", "kwargs", "img_size", "in_chans"))]
    return max(same, key=lambda r: r["time"], default=None)


def table1(runs, paper_rows):
    headers = ["Model", "Variant", "r", "Top-1 paper", "Top-1 ours", "Δ top-1", "Top-1 drop paper",
               "Top-1 drop ours", "Top-5 paper", "Top-5 ours", "Δ top-5", "Top-5 drop paper", "Top-5 drop ours",
               "Params M paper", "Params −% paper", "Params M ours", "Params −% ours", "FLOPs G paper",
               "FLOPs −% paper", "FLOPs G ours (official)", "FLOPs −% ours (official)", "FLOPs G ours (fvcore)",
               "FLOPs −% ours (fvcore)", "Sparse FLOPs G ours", "Sparse −% ours"]
    rows, notes = [], []
    for model in MODELS:
        dense_acc = find_run(runs, f"table1/{model}_dense")[0]
        for p in [r for r in paper_rows if r["model"] == model]:
            variant, is_dense = p["variant"], p["variant"] == "dense"
            experiment = f"table1/{model}_{variant.lower()}"
            acc, counts, refused = find_run(runs, experiment)
            note = source_note(f"{NAMES[model]} {variant}", acc, counts, refused)
            if is_dense and counts is None and (counts := dense_totals(runs, experiment)):
                note[0] = f"{NAMES[model]} dense: no run; params and FLOPs are the dense totals of `{counts['folder']}`"
            top1, top5 = (acc["top1"], acc["top5"]) if acc else (None, None)
            drop1 = drop5 = DASH
            if not is_dense and acc and dense_acc:
                drop1, drop5 = num(dense_acc["top1"] - top1), num(dense_acc["top5"] - top5)
            rows.append([NAMES[model], variant, num(row_of(experiment)["ratio"]), num(p["top1"]), num(top1),
                         diff(top1, p["top1"]), num(p["top1_drop"]), drop1, num(p["top5"]), num(top5),
                         diff(top5, p["top5"]), num(p["top5_drop"]), drop5, num(p["params_m"], 1),
                         num(p["params_reduction_pct"], 1), *ours_counts(counts, is_dense)[:2], num(p["flops_g"], 1),
                         num(p["flops_reduction_pct"], 1), *ours_counts(counts, is_dense)[2:]])
            notes += note
    return headers, rows, notes


def table3(runs, paper_rows):
    headers = ["Removed % (paper)", "Model", "Reading", "r ours", "Params −% ours", "Uniform paper", "Uniform ours",
               "Δ uniform", "DIMAP paper", "DIMAP ours", "Δ DIMAP", "Gain paper (printed)", "Gain paper (recomputed)",
               "Gain ours", "FLOPs −% ours (official)", "Sparse FLOPs −% uniform", "Sparse FLOPs −% DIMAP"]
    rows, notes = [], []
    for p in sorted(paper_rows, key=lambda r: (int(r["params_removed_pct"]), MODELS.index(r["model"]))):
        model, share = p["model"], int(p["params_removed_pct"])
        for suffix, reading in READINGS:
            found = {}
            for method in ("uniform", "dimap"):
                experiment = f"table3/{model}_{method}_{share}{suffix}"
                ratio = row_of(experiment)["ratio"]  # the experiment file maps the reading to r
                found[method] = (ratio, *find_run(runs, experiment))
                notes += source_note(f"{NAMES[model]} {share}% {reading} {method} (r={ratio})", *found[method][1:])
            (r, u_acc, u_cnt, _), (_, d_acc, d_cnt, _) = found["uniform"], found["dimap"]
            u1, d1 = (u_acc or {}).get("top1"), (d_acc or {}).get("top1")
            gain_ours = num(d1 - u1, 2, signed=True) if u1 is not None and d1 is not None else DASH
            rows.append([str(share), NAMES[model], reading, num(r, 4), pct(d_cnt or u_cnt, "params_reduction_pct"),
                         num(p["uniform_top1"]), num(u1), diff(u1, p["uniform_top1"]), num(p["dimap_top1"]), num(d1),
                         diff(d1, p["dimap_top1"]), num(p["printed_gain"], 2, True),
                         num(float(p["dimap_top1"]) - float(p["uniform_top1"]), 2, True), gain_ours,
                         pct(d_cnt or u_cnt, "flops_official_paper_reduction_pct"), sparse_pct(u_cnt), sparse_pct(d_cnt)])
    return headers, rows, notes


def table4(runs, paper_rows):
    headers = ["Model", "Variant", "Multiple modules paper", "Multiple modules ours", "Single module paper",
               "Single module ours", "Difference paper", "Difference ours", "Sparse FLOPs −% multiple ours",
               "Sparse FLOPs −% single ours"]
    rows, notes = [], []
    for p in sorted(paper_rows, key=lambda r: MODELS.index(r["model"])):
        model = p["model"]
        m_acc, m_cnt, m_refused = find_run(runs, f"table1/{model}_dimap3")
        s_acc, s_cnt, s_refused = find_run(runs, f"table4/{model}_single_module")
        m1, s1 = (m_acc or {}).get("top1"), (s_acc or {}).get("top1")
        rows.append([NAMES[model], p["variant"], num(p["multiple_modules_top1"]), num(m1), num(p["single_module_top1"]),
                     num(s1), num(p["difference"], 2, True), diff(m1, s1) if s1 is not None else DASH,
                     sparse_pct(m_cnt), sparse_pct(s_cnt)])
        notes += source_note(f"{NAMES[model]} multiple modules (DIMAP3)", m_acc, m_cnt, m_refused)
        notes += source_note(f"{NAMES[model]} single module", s_acc, s_cnt, s_refused)
    return headers, rows, notes


# ---------------------------------------------------------------- writers
COMMON_NOTES = [
    "Δ = ours − paper. Drops are against OUR measured dense baseline (table1/*_dense); the paper's dense numbers "
    "are cited from the Swin authors. A dash means no such number: no run of that row, or a run without accuracy "
    "(prune-only); a cell takes only the row's own run (scripts/table_runs.py), and refused runs are listed below.",
    "Paper-style FLOPs (how the paper's Table 1 was computed) remove r x the FLOPs of the prunable linear layers. "
    "'official' counts FLOPs with the official Swin code's analytic formula (it gives the paper's dense 4.5 / 8.7 "
    "/ 15.4 G): the column to compare with the paper's; 'fvcore' is our measured count (fvcore multiply-adds at "
    "224x224). Sparse FLOPs (fvcore) scale each linear layer by its own kept fraction, attention matmuls and the "
    "rest staying dense, so they drop less.",
    "Params and paper-style FLOPs do not depend on the weights. Sparse FLOPs do, so they are shown only from runs "
    "on pretrained weights, never from prune-only runs on random weights.",
]
EXTRA_NOTES = {
    "table3": ["The paper labels its rows 'proportion of removed parameters' without saying of what: each row is "
               "shown in both readings, 'of all params' (r = the share of prunable weights that removes that share "
               "of ALL parameters; conf/experiment/table3/*.yaml show the arithmetic) and 'of prunable weights' "
               "(r = the label; *_prunable.yaml). The paper's numbers are the same on both rows: it is not known "
               "which reading they belong to. The paper's Swin-T 38% row prints a gain of +4.79 where its own "
               "numbers give +6.48 (both shown)."],
    "table4": ["Multiple modules = DIMAP3 (Table 1); single module = all prunable layers ranked by Eq. 10 under one "
               "threshold (global LAMP), same ratio 0.55 and finetuning. Difference = multiple − single."],
}
TITLES = {"table1": "Table 1: DIMAP on ImageNet-1k (after 30-epoch finetuning)",
          "table3": "Table 3: uniform vs DIMAP without finetuning (top-1)",
          "table4": "Table 4: multiple modules vs a single module (top-1, after finetuning)"}


def to_markdown(title, headers, rows, notes) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in notes[:-1]] + [f"- {notes[-1][0]}"]
    lines += [f"  - {s}" for s in notes[-1][1]]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("%", r"\%"), ("_", r"\_"), ("&", r"\&"), ("#", r"\#"),
                 ("Δ", r"$\Delta$"), ("−", "--"), ("–", "--"), ("`", "")):
        s = s.replace(a, b)
    return s


def to_latex(title, headers, rows, notes) -> str:
    lines = [f"% {title}. Generated by scripts/make_tables.py; needs \\usepackage{{booktabs}}.",
             "\\begin{table}[t]", "\\centering", "\\scriptsize", f"\\caption{{{_tex(title)}}}",
             "\\resizebox{\\textwidth}{!}{%", "\\begin{tabular}{" + "l" * 2 + "r" * (len(headers) - 2) + "}",
             "\\toprule", " & ".join(_tex(h) for h in headers) + " \\\\", "\\midrule"]
    lines += [" & ".join(_tex(c) for c in r) + " \\\\" for r in rows]
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}"] + [f"% {_tex(n)}" for n in notes[:-1]]
    lines += [f"% {_tex(notes[-1][0])}"] + [f"%   {_tex(s)}" for s in notes[-1][1]]
    return "\n".join(lines) + "\n"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build_tables(runs_dir: Path, paper_dir: Path) -> tuple[dict, int]:
    """{table name: (title, headers, rows, notes)} and the number of runs read."""
    runs = load_runs(runs_dir) if runs_dir.is_dir() else []
    tables = {}
    for name, build in (("table1", table1), ("table3", table3), ("table4", table4)):
        headers, rows, sources = build(runs, read_csv(paper_dir / f"{name}.csv"))
        tables[name] = (TITLES[name], headers, rows, COMMON_NOTES + EXTRA_NOTES.get(name, []) +
                        [("Sources of our columns:", sources)])
    headers, rows, sources = table_baselines(runs)  # beyond the paper: no paper columns
    tables["baselines"] = (BASELINE_TITLE, headers, rows, BASELINE_NOTES + [("Sources:", sources)])
    return tables, len(runs)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=ROOT / "results/runs", type=Path, help="default: results/runs")
    p.add_argument("--paper", default=ROOT / "results/paper", type=Path, help="default: results/paper")
    p.add_argument("--out", default=ROOT / "results/tables", type=Path, help="default: results/tables")
    p.add_argument("--wandb", action="store_true", help="also log the tables to wandb (conf/tables.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of conf/tables.yaml, e.g. logger.project=x")
    args = p.parse_args(argv)
    tables, n_runs = build_tables(args.runs, args.paper)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (title, headers, rows, notes) in tables.items():
        (args.out / f"{name}.md").write_text(to_markdown(title, headers, rows, notes))
        (args.out / f"{name}.tex").write_text(to_latex(title, headers, rows, notes))
    print(f"wrote {', '.join(tables)} (.md, .tex) to {args.out} from {n_runs} runs under {args.runs}")
    if args.wandb:
        from tables_wandb import log_tables
        print(f"logged the tables to wandb run {log_tables(tables, args.overrides, n_runs)}")
    elif args.overrides:
        p.error("key=value overrides configure --wandb: pass --wandb too")


if __name__ == "__main__":
    main()
