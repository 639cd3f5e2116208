"""The small replication's report: the summary table (medians and spreads over seeds) and the plot.

Used by scripts/replicate_demo.py, which runs the criteria and writes the rows this module reads.
"""
from pathlib import Path

import torch

CRITERIA = ("uniform", "dimap", "single_module", "global_magnitude")
COLORS = {"dimap": "tab:red", "single_module": "tab:orange", "global_magnitude": "tab:blue", "uniform": "tab:gray",
          "wanda": "tab:green", "wanda_module": "tab:olive", "sparsegpt": "tab:purple"}
MARKERS = {"dimap": "o", "single_module": "^", "global_magnitude": "v", "uniform": "s", "wanda": "D",
           "wanda_module": "d", "sparsegpt": "P"}


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    t = torch.tensor(values, dtype=torch.float64)
    return f"{t.mean():.1f} ± {t.std():.1f} [{t.min():.1f}, {t.max():.1f}]"


def pick(rows, **want) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in want.items())]


def summary_markdown(rows: list[dict], denses: list[dict], skipped: list[float], criteria=CRITERIA) -> str:
    seeds = sorted({d["seed"] for d in denses})
    n_val = denses[0]["config"]["data"].get("val_size")
    model = denses[0]["config"]["model"]
    lines = [f"Model: {model['short']} ({model['name']} with {model['kwargs']}), {denses[0]['params_total']:,} "
             f"parameters, {denses[0]['prunable_weights']:,} of them prunable.", "",
             f"Top-1 (%) on the {n_val} {denses[0]['config']['data']['name']} validation images, over {len(seeds)} "
             f"dense seed(s) {seeds}: "
             "mean ± std [min, max] (one value when there is one seed).", "",
             f"Dense models: top-1 {spread([d['dense_top1'] for d in denses])}, "
             f"{denses[0]['dense_steps']} AdamW steps each.", "",
             "## Table 3 shape: no finetuning", ""]
    t3 = pick(rows, table="table3")
    if not t3:
        lines.append("(no share reachable)")
    methods = [m for m in criteria if pick(t3, criterion=m)]
    has_pair = "dimap" in methods and "uniform" in methods
    head = ["% params removed", "r"] + methods + (["dimap − uniform (paired)"] if has_pair else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] if t3 else []
    for share in sorted({r["share_removed_pct"] for r in t3}) if t3 else []:
        at = pick(t3, share_removed_pct=share)
        cells = [f"{share:g}", f"{at[0]['ratio']:.3f}"]
        cells += [spread([r["top1"] for r in pick(at, criterion=m)]) for m in methods]
        if has_pair:
            diffs = [pick(at, criterion="dimap", seed=s)[0]["top1"] - pick(at, criterion="uniform", seed=s)[0]["top1"]
                     for s in seeds]
            cells.append(spread(diffs))
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", f"Skipped (more than the prunable share of all parameters): {', '.join(f'{s:g}%' for s in skipped)}."]
    for ratio in sorted({r["ratio"] for r in pick(rows, table="table4")}):
        t4 = pick(rows, table="table4", ratio=ratio)
        lines += ["", f"## Table 4 shape: r = {ratio:g} ({t4[0]['share_removed_pct']:g}% of all parameters), "
                  f"finetuned {max(r['finetune_epochs'] for r in t4)} epochs with the mask fixed", "",
                  "| criterion | pruned | finetuned | finetuned − dimap (paired) |", "|---|---|---|---|"]
        ref = {r["seed"]: r["top1"] for r in pick(t4, criterion="dimap", finetuned="yes")}
        for m in [m for m in criteria if pick(t4, criterion=m)]:
            ft = {r["seed"]: r["top1"] for r in pick(t4, criterion=m, finetuned="yes")}
            diff = spread([ft[s] - ref[s] for s in seeds]) if ref and m != "dimap" else ""
            lines.append(f"| {m} | {spread([r['top1'] for r in pick(t4, criterion=m, finetuned='no')])} | "
                         f"{spread(list(ft.values()))} | {diff} |")
    return "\n".join(lines) + "\n"


def _band(ax, x, values: list[torch.Tensor], m: str, label=None) -> None:
    """Mean line with a min-max band over seeds."""
    ax.plot(x, [v.mean() for v in values], "-", marker=MARKERS[m], color=COLORS[m], label=label, ms=5,
            zorder=3 if m == "dimap" else 2)
    ax.fill_between(x, [v.min() for v in values], [v.max() for v in values], color=COLORS[m], alpha=0.15)


def plot(rows: list[dict], denses: list[dict], path: Path, criteria=CRITERIA) -> None:
    """Left: Table 3 accuracy, and each criterion minus uniform on the same dense model (paired, per seed).
    Right: one bar panel per Table 4 ratio, pruned (hatched) and finetuned (solid). Bands and bars: min-max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t3 = pick(rows, table="table3")
    ratios = sorted({r["ratio"] for r in pick(rows, table="table4")})
    n = max(2, len(ratios))
    fig = plt.figure(figsize=(13 if ratios else 8, 3.6 * n))
    grid = fig.add_gridspec(n, 2 if ratios else 1, width_ratios=[1.6, 1] if ratios else None)
    seeds = sorted({r["seed"] for r in rows})
    methods = [m for m in criteria if pick(t3, criterion=m)]
    shares = sorted({r["share_removed_pct"] for r in t3})

    def top1(rs, m, share):
        return {r["seed"]: r["top1"] for r in pick(rs, criterion=m, share_removed_pct=share)}

    ax = fig.add_subplot(grid[: n // 2, 0])
    dense = torch.tensor([d["dense_top1"] for d in denses], dtype=torch.float64)
    ax.axhline(dense.mean().item(), color="k", ls="--", lw=1, label=f"dense ({dense.mean():.1f})")
    for m in methods:
        _band(ax, shares, [torch.tensor(list(top1(t3, m, s).values()), dtype=torch.float64) for s in shares], m, m)
    ax.set(ylabel="top-1 (%)", title=f"Table 3 shape, no finetuning ({len(seeds)} dense seeds, min-max bands)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[n // 2:, 0], sharex=ax)
    ax.axhline(0, color=COLORS["uniform"], lw=1)
    for m in [m for m in methods if m != "uniform"] if "uniform" in methods else []:
        diffs = [torch.tensor([top1(t3, m, s)[k] - top1(t3, "uniform", s)[k] for k in seeds], dtype=torch.float64)
                 for s in shares]
        _band(ax, shares, diffs, m, m)
    ax.set(xlabel="% of all parameters removed", ylabel="top-1 minus uniform (points)",
           title="the same, minus uniform on the same dense model")
    ax.grid(alpha=0.3)
    for i, ratio in enumerate(ratios):
        ax = fig.add_subplot(grid[i, 1])
        t4 = pick(rows, table="table4", ratio=ratio)
        crits = [m for m in criteria if pick(t4, criterion=m)]
        for k, m in enumerate(crits):
            for j, ft in enumerate(("no", "yes")):
                a = torch.tensor([r["top1"] for r in pick(t4, criterion=m, finetuned=ft)], dtype=torch.float64)
                x = k + (j - 0.5) * 0.38
                ax.bar(x, a.mean(), 0.36, color=COLORS[m], alpha=0.45 if ft == "no" else 0.95,
                       hatch="//" if ft == "no" else None, edgecolor="k", lw=0.5)
                ax.errorbar(x, a.mean(), yerr=[[a.mean() - a.min()], [a.max() - a.mean()]], color="k", capsize=3)
        lo, hi = min(r["top1"] for r in t4), max(r["top1"] for r in t4)
        ax.set_ylim(max(0, lo - 2 - (hi - lo) / 2), min(100, hi + 1 + (hi - lo) / 4))
        ax.set_xticks(range(len(crits)), crits)
        epochs = max(r["finetune_epochs"] for r in t4)
        ax.set(ylabel="top-1 (%)", title=f"Table 4 shape: r={ratio:g} ({t4[0]['share_removed_pct']:g}% removed)\n"
               f"hatched: pruned; solid: finetuned {epochs} epochs")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
