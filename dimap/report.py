"""What a run writes and prints: the summary file, the console table, the kept-fraction plot."""
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from dimap.errors import UserError


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temporary file, then rename), so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def finished_summary(out_dir: str | Path) -> dict | None:
    """out_dir/summary.json when it records a finished training run (it is written last, with top1), else None."""
    try:
        summary = json.loads((Path(out_dir) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) and summary.get("top1") is not None else None


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (train.epochs, not train), for a message that names what changed."""
    keys = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def check_output_dir(out_dir: str | Path, config: dict, ignore=("output_dir",)) -> None:
    """Refuse an output folder that holds a finished run of a different config, before anything is written."""
    summary = Path(out_dir) / "summary.json"
    if not summary.is_file():
        return
    try:
        old = json.loads(summary.read_text()).get("config", {})
    except (json.JSONDecodeError, OSError):
        raise UserError(f"{summary} is unreadable: move it away or choose another output_dir") from None
    strip = lambda c: {k: v for k, v in c.items() if k not in ignore}  # noqa: E731
    # a key added to the configs later with a null default (e.g. logger.dir) reads as absent: not a difference
    if diff := differing_keys(strip(old), strip(config)):
        raise UserError(f"output_dir={out_dir} holds a finished run of a different config (differs in "
                        f"{', '.join(diff)}): choose another output_dir or delete that folder")


def format_table(summary: dict) -> str:
    """A readable per-module table and the headline figures."""
    rows = [f"{'module':<8} {'weights':>12} {'kept':>12} {'kept %':>7} {'GFLOPs':>8}"]
    for name, m in summary["modules"].items():
        if m["weights"]:
            rows.append(f"{name:<8} {m['weights']:>12,} {m['kept']:>12,} {100 * m['kept_fraction']:>7.2f} "
                        f"{m['flops'] / 1e9:>8.3f}")
    s = summary
    rows += [
        f"params   {s['params_nonzero'] / 1e6:.2f} M non-zero of {s['params_total'] / 1e6:.2f} M "
        f"(-{s['params_reduction_pct']:.1f}%)",
        f"FLOPs    dense {s['flops_dense'] / 1e9:.3f} G | paper-style {s['flops_paper'] / 1e9:.3f} G "
        f"(-{s['flops_paper_reduction_pct']:.1f}%) | sparse {s['flops_sparse'] / 1e9:.3f} G "
        f"(-{s['flops_sparse_reduction_pct']:.1f}%)",
    ]
    if "flops_nm_kernel" in s:  # N:M: what the GPU's N:M kernels execute and store
        rows.append(f"{s['pattern']:<8} {s['nm_layers']} layers N:M, {s['dense_layers']} dense | kernel FLOPs "
                    f"{s['flops_nm_kernel'] / 1e9:.3f} G (-{s['flops_nm_kernel_reduction_pct']:.1f}%) | 16-bit weights "
                    f"{s['weight_bytes_16bit_nm'] / 2**20:.2f} MiB of {s['weight_bytes_16bit_dense'] / 2**20:.2f} MiB "
                    f"({s['weight_bytes_16bit_nm_pct']:.1f}%)")
    return "\n".join(rows)


def plot_kept_fraction(layers: list[dict], path: str | Path, title: str) -> None:
    """Kept fraction per prunable layer in network order, coloured by module (the paper's Figure 5)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = {"QKV-M": "tab:blue", "PRJ-M": "tab:orange", "MLP-M": "tab:green"}
    fig, ax = plt.subplots(figsize=(max(6, len(layers) * 0.12), 3.2))
    ax.bar(range(len(layers)), [l["kept_fraction"] for l in layers],
           color=[colours[l["module"]] for l in layers], width=0.85)
    ax.set(xlabel="prunable layer (network order)", ylabel="kept fraction", ylim=(0, 1.02), title=title)
    # explicit patches: an empty ax.bar() gives a legend entry in the default colour, not the module's
    ax.legend(handles=[Patch(color=c, label=m) for m, c in colours.items()], loc="lower left", fontsize=8, ncol=3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prune_summary(model_cfg: dict, method: str, ratio: float, accounting: dict, **extra) -> dict:
    """The summary record shared by prune.py and train.py: what was pruned, how, and every figure."""
    from dimap.provenance import git_commit, versions
    return {"model": model_cfg["name"], "model_short": model_cfg.get("short", model_cfg["name"]),
            "method": method, "ratio": ratio, "weights": str(model_cfg.get("weights", "random")),
            **{k: v for k, v in accounting.items() if k not in ("modules", "layers")},
            **extra, "git_commit": git_commit(), "versions": versions(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # newest run wins a table cell
            "modules": accounting["modules"], "layers": accounting["layers"]}


def results_table(s: dict) -> str:
    """Dense, pruned and finetuned rows: top-1, top-5, non-zero parameters, paper-style FLOPs."""
    rows = [f"{'':<10} {'top-1':>7} {'top-5':>7} {'params (M)':>11} {'FLOPs (G, paper)':>17}"]
    for name, key, params, flops in (("dense", "dense", s["params_total"], s["flops_dense"]),
                                     ("pruned", "pruned", s["params_nonzero"], s["flops_paper"]),
                                     ("finetuned", "", s["params_nonzero"], s["flops_paper"])):
        top1, top5 = s.get(f"{key}_top1" if key else "top1"), s.get(f"{key}_top5" if key else "top5")
        if top1 is None or (name == "finetuned" and not s["epochs"]):
            continue
        rows.append(f"{name:<10} {top1:>7.2f} {top5:>7.2f} {params / 1e6:>11.3f} {flops / 1e9:>17.4f}")
    return "\n".join(rows)
