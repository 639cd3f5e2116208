"""Tables 1, 3 and 4 of the paper next to ours, as Markdown and LaTeX.

    python scripts/make_tables.py [--runs results/runs] [--paper results/paper] [--out results/tables]

Reads every summary.json under --runs (written by prune.py or train.py) and the paper's numbers from
--paper/table{1,3,4}.csv, and writes table{1,3,4}.{md,tex} to --out.

Matching a run to a row (content, not folder names): a row is (model, method, ratio, kind).
- Accuracy (top-1/top-5) comes only from a run with the same model_short, method and ratio (within 1e-6) that
  holds top1, and whose `epochs` is > 0 for the finetuned rows (Table 1 DIMAP1/2/3, Table 4) or == 0 for the
  evaluation-only rows (Table 1 dense, Table 3). A dense row is any method at ratio 0 with epochs == 0.
- Params and FLOPs come from that same run; without one, from any run with the same model_short, method and
  ratio (e.g. a prune-only run of prune.py), preferring pretrained over random weights.
- Ties go to the run in the row's own folder (tableN/ROW, or prune_only/tableN/ROW), then to the newest.
- A dense row without a run of its own takes its params and FLOPs (not its accuracy) from the dense totals
  (params_total, flops_dense) that any run of that model records.
A row without a run, or whose run has no accuracy, shows a dash in our accuracy columns. Paper columns only
ever hold the paper's numbers, ours only ours. Drops are against OUR measured dense baseline (table1/*_dense).
Inspect runs (method none) match no row.
"""
import argparse
import csv
import json
from pathlib import Path

MODELS = ("swin_t", "swin_s", "swin_b")
NAMES = {"swin_t": "Swin-T", "swin_s": "Swin-S", "swin_b": "Swin-B"}
DIMAP_RATIOS = {"DIMAP1": 0.15, "DIMAP2": 0.35, "DIMAP3": 0.55}
DASH = "–"
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- runs
def load_runs(runs_dir: Path) -> list[dict]:
    runs = []
    for path in sorted(runs_dir.rglob("summary.json")):
        try:
            s = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "model_short" not in s or s.get("method") in (None, "none"):
            continue
        epochs = s.get("epochs", ((s.get("config") or {}).get("train") or {}).get("epochs"))
        runs.append({**s, "epochs": epochs, "folder": path.parent.relative_to(runs_dir).as_posix(),
                     "mtime": path.stat().st_mtime})
    return runs


def _same_ratio(a, b) -> bool:
    return a is not None and abs(float(a) - float(b)) < 1e-6


def find_run(runs, model, method, ratio, finetuned: bool, folder: str) -> tuple[dict | None, dict | None]:
    """(run with accuracy, run with counts) for one row, by the rule in the module docstring."""
    dense = ratio == 0
    same = [r for r in runs if r["model_short"] == model and _same_ratio(r["ratio"], ratio)
            and (dense or r["method"] == method)]
    own = lambda r: r["folder"] in (folder, f"prune_only/{folder}")  # noqa: E731
    acc = [r for r in same if r.get("top1") is not None and r["epochs"] is not None
           and ((r["epochs"] > 0) if finetuned else (r["epochs"] == 0))]
    acc_run = max(acc, key=lambda r: (own(r), r["mtime"]), default=None)
    if acc_run:
        return acc_run, acc_run
    counts = max(same, key=lambda r: (r.get("weights") != "random", own(r), r["mtime"]), default=None)
    return None, counts


# ---------------------------------------------------------------- formatting
def num(x, digits=2, signed=False):
    if x is None or x == "":
        return DASH
    return f"{float(x):+.{digits}f}" if signed else f"{float(x):.{digits}f}"


def diff(ours, paper, digits=2):
    return DASH if ours is None or paper in (None, "") else num(float(ours) - float(paper), digits, signed=True)


def paper_float(x):
    return None if x in (None, "") else float(x)


def ours_counts(run, dense=False):
    """Our params (M), params -%, paper-style FLOPs (G) and -%, sparse FLOPs (G) and -%; dashes without a run.
    For a dense row these are the run's dense totals and the reductions are dashes."""
    if run is None:
        return [DASH] * 6
    if dense:
        return [num(run["params_total"] / 1e6), DASH, num(run["flops_dense"] / 1e9), DASH,
                num(run["flops_dense"] / 1e9), DASH]
    return [num(run["params_nonzero"] / 1e6), num(run["params_reduction_pct"], 1), num(run["flops_paper"] / 1e9),
            num(run["flops_paper_reduction_pct"], 1), num(run["flops_sparse"] / 1e9),
            num(run["flops_sparse_reduction_pct"], 1)]


def _commit(run) -> str:
    sha = str(run.get("git_commit"))
    return sha[:12] + ("+dirty" if sha.endswith("+dirty") else "")


def source_note(label, acc_run, count_run):
    if count_run is None:
        return f"{label}: no run"
    weights = "random weights" if count_run.get("weights") == "random" else f"weights {count_run.get('weights')}"
    what = "accuracy and counts" if acc_run else "counts only (no accuracy)"
    return f"{label}: {what} from `{count_run['folder']}` ({weights}, commit {_commit(count_run)})"


# ---------------------------------------------------------------- tables
def table1(runs, paper_rows):
    headers = ["Model", "Variant", "r", "Top-1 paper", "Top-1 ours", "Δ top-1", "Top-1 drop paper",
               "Top-1 drop ours", "Top-5 paper", "Top-5 ours", "Δ top-5", "Top-5 drop paper", "Top-5 drop ours", "Params M paper", "Params −% paper",
               "Params M ours", "Params −% ours", "FLOPs G paper", "FLOPs −% paper", "FLOPs G ours",
               "FLOPs −% ours", "Sparse FLOPs G ours", "Sparse −% ours"]
    rows, notes = [], []
    for model in MODELS:
        dense_acc, _ = find_run(runs, model, "dimap", 0.0, False, f"table1/{model}_dense")
        for p in [r for r in paper_rows if r["model"] == model]:
            variant = p["variant"]
            is_dense = variant == "dense"
            ratio = 0.0 if is_dense else DIMAP_RATIOS[variant]
            folder = f"table1/{model}_{variant.lower()}"
            acc, counts = find_run(runs, model, "dimap", ratio, not is_dense, folder)
            note = source_note(f"{NAMES[model]} {variant}", acc, counts)
            if is_dense and counts is None:  # the dense totals are the same in every run of this model
                counts = max((r for r in runs if r["model_short"] == model), key=lambda r: r["mtime"], default=None)
                if counts:
                    note = f"{NAMES[model]} dense: no run; params and FLOPs are the dense totals of `{counts['folder']}`"
            top1, top5 = (acc["top1"], acc["top5"]) if acc else (None, None)
            drop1 = drop5 = DASH
            if not is_dense and acc and dense_acc:
                drop1, drop5 = num(dense_acc["top1"] - top1), num(dense_acc["top5"] - top5)
            c = ours_counts(counts, is_dense)
            rows.append([NAMES[model], variant, num(ratio), num(p["top1"]), num(top1), diff(top1, p["top1"]),
                         num(p["top1_drop"]), drop1, num(p["top5"]), num(top5), diff(top5, p["top5"]),
                         num(p["top5_drop"]), drop5, num(p["params_m"], 1), num(p["params_reduction_pct"], 1),
                         c[0], c[1], num(p["flops_g"], 1), num(p["flops_reduction_pct"], 1), c[2], c[3], c[4], c[5]])
            notes.append(note)
    return headers, rows, notes


def table3(runs, paper_rows):
    headers = ["Removed % (paper)", "Model", "r ours", "Uniform paper", "Uniform ours", "Δ uniform", "DIMAP paper",
               "DIMAP ours", "Δ DIMAP", "Gain paper (printed)", "Gain paper (recomputed)", "Gain ours", "Params −% ours",
               "FLOPs −% ours (paper-style)", "Sparse FLOPs −% uniform", "Sparse FLOPs −% DIMAP"]
    rows, notes = [], []
    for p in sorted(paper_rows, key=lambda r: (int(r["params_removed_pct"]), MODELS.index(r["model"]))):
        model, share = p["model"], int(p["params_removed_pct"])
        found = {}
        for method in ("uniform", "dimap"):
            folder = f"table3/{model}_{method}_{share}"
            # the per-module ratio r comes from the experiment file (the share of ALL parameters mapped to r)
            ratio = _ratio_of(folder)
            found[method] = (ratio, *find_run(runs, model, method, ratio, False, folder))
            notes.append(source_note(f"{NAMES[model]} {share}% {method} (r={ratio})", *found[method][1:]))
        (r, u_acc, u_cnt), (_, d_acc, d_cnt) = found["uniform"], found["dimap"]
        u1, d1 = (u_acc or {}).get("top1"), (d_acc or {}).get("top1")
        cnt = d_cnt or u_cnt
        gain_ours = num(d1 - u1, 2, signed=True) if u1 is not None and d1 is not None else DASH
        rows.append([str(share), NAMES[model], num(r, 4), num(p["uniform_top1"]), num(u1), diff(u1, p["uniform_top1"]),
                     num(p["dimap_top1"]), num(d1), diff(d1, p["dimap_top1"]), num(p["printed_gain"], 2, True),
                     num(float(p["dimap_top1"]) - float(p["uniform_top1"]), 2, True), gain_ours,
                     num(cnt["params_reduction_pct"], 1) if cnt else DASH,
                     num(cnt["flops_paper_reduction_pct"], 1) if cnt else DASH,
                     num(u_cnt["flops_sparse_reduction_pct"], 1) if u_cnt else DASH,
                     num(d_cnt["flops_sparse_reduction_pct"], 1) if d_cnt else DASH])
    return headers, rows, notes


def table4(runs, paper_rows):
    headers = ["Model", "Variant", "Multiple modules paper", "Multiple modules ours", "Single module paper",
               "Single module ours", "Difference paper", "Difference ours", "Sparse FLOPs −% multiple ours",
               "Sparse FLOPs −% single ours"]
    rows, notes = [], []
    for p in sorted(paper_rows, key=lambda r: MODELS.index(r["model"])):
        model = p["model"]
        m_acc, m_cnt = find_run(runs, model, "dimap", 0.55, True, f"table1/{model}_dimap3")
        s_acc, s_cnt = find_run(runs, model, "single_module", 0.55, True, f"table4/{model}_single_module")
        m1, s1 = (m_acc or {}).get("top1"), (s_acc or {}).get("top1")
        rows.append([NAMES[model], p["variant"], num(p["multiple_modules_top1"]), num(m1), num(p["single_module_top1"]),
                     num(s1), num(p["difference"], 2, True), diff(m1, s1) if s1 is not None else DASH,
                     num(m_cnt["flops_sparse_reduction_pct"], 1) if m_cnt else DASH,
                     num(s_cnt["flops_sparse_reduction_pct"], 1) if s_cnt else DASH])
        notes.append(source_note(f"{NAMES[model]} multiple modules (DIMAP3)", m_acc, m_cnt))
        notes.append(source_note(f"{NAMES[model]} single module", s_acc, s_cnt))
    return headers, rows, notes


def _ratio_of(folder: str) -> float:
    """prune.ratio of the experiment file conf/experiment/FOLDER.yaml (Table 3 maps shares of all params to r)."""
    from omegaconf import OmegaConf
    path = ROOT / "conf" / "experiment" / f"{folder}.yaml"
    return float(OmegaConf.load(path).prune.ratio)


# ---------------------------------------------------------------- writers
COMMON_NOTES = [
    "Δ = ours − paper. Drops are against OUR measured dense baseline (table1/*_dense); the paper's dense numbers "
    "are cited from the Swin authors. A dash means no such number: no run, or a run without accuracy "
    "(prune-only); nothing is filled in from elsewhere.",
    "FLOPs are fvcore multiply-adds at 224x224. Paper-style FLOPs (how the paper's Table 1 was computed) remove "
    "r x the FLOPs of the prunable linear layers; sparse FLOPs scale each linear layer by its own kept fraction "
    "(attention matmuls and the rest stay dense), so they drop less.",
    "Params and paper-style FLOPs do not depend on the weights (each module loses the same share r). Sparse FLOPs "
    "do: runs on random weights (prune-only, `model.weights=random`) distribute the pruning over layers unlike "
    "the pretrained weights, so their sparse FLOPs differ from those of the real runs.",
]
EXTRA_NOTES = {
    "table3": ["The paper's ratio is the share of ALL parameters removed; r is the per-module share of prunable "
               "weights that removes it (conf/experiment/table3/*.yaml show the arithmetic). The paper's Swin-T 38% "
               "row prints a gain of +4.79 where its own numbers give +6.48 (both shown)."],
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=ROOT / "results/runs", type=Path, help="default: results/runs")
    p.add_argument("--paper", default=ROOT / "results/paper", type=Path, help="default: results/paper")
    p.add_argument("--out", default=ROOT / "results/tables", type=Path, help="default: results/tables")
    args = p.parse_args(argv)
    runs = load_runs(args.runs) if args.runs.is_dir() else []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in (("table1", table1), ("table3", table3), ("table4", table4)):
        headers, rows, sources = build(runs, read_csv(args.paper / f"{name}.csv"))
        notes = COMMON_NOTES + EXTRA_NOTES.get(name, []) + [("Sources of our columns:", sources)]
        (args.out / f"{name}.md").write_text(to_markdown(TITLES[name], headers, rows, notes))
        (args.out / f"{name}.tex").write_text(to_latex(TITLES[name], headers, rows, notes))
    print(f"wrote table1, table3, table4 (.md, .tex) to {args.out} "
          f"from {len(runs)} runs under {args.runs}")


if __name__ == "__main__":
    main()
