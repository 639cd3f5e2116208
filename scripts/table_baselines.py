"""Beyond the paper: DIMAP (Table 1's rows) beside Wanda, module-aware Wanda and SparseGPT at the same ratios on
Swin-T/S/B, each pruned and then finetuned with the paper's recipe (conf/experiment/baselines/*.yaml). Used by
make_tables.py, under the same rules as the paper's tables (scripts/table_runs.py): a cell takes only its row's
own run, the newest such run wins, refused runs are named, a missing run is a dash."""
from table_runs import find_run

MODELS = ("swin_t", "swin_s", "swin_b")
NAMES = {"swin_t": "Swin-T", "swin_s": "Swin-S", "swin_b": "Swin-B"}
RATIOS = {15: "dimap1", 35: "dimap2", 55: "dimap3"}  # r = 0.15 / 0.35 / 0.55: the DIMAP1/2/3 rows of Table 1
METHODS = (("DIMAP", None), ("Wanda", "wanda"), ("Wanda (module-aware)", "wanda_module"), ("SparseGPT", "sparsegpt"))
DASH = "–"

TITLE = "Beyond the paper: DIMAP against data-aware one-shot pruning (top-1, pruned and after 30-epoch finetuning)"
NOTES = [
    "Every row removes the same share r of the prunable weights: DIMAP within each module (Eq. 10), Wanda within "
    "each output row, module-aware Wanda within each module (Wanda's score), SparseGPT within each layer, updating "
    "the kept weights (docs/baselines.md). All are finetuned with the paper's recipe, as Table 1's DIMAP rows, whose "
    "runs fill the DIMAP columns. The data-aware methods calibrate on 4096 ImageNet training images (seed 0).",
    "'pruned' is top-1 right after pruning, before finetuning; 'prune s' the seconds the masks took (calibration "
    "included), on the machine of that run: compare them within a run's hardware only. A dash: no such run.",
]


def experiment(model: str, pct: int, method: str | None) -> str:
    return f"table1/{model}_{RATIOS[pct]}" if method is None else f"baselines/{model}_{method}_{pct}"


def _cells(run) -> list[str]:
    if run is None:
        return [DASH] * 3
    seconds = (run.get("pruning") or {}).get("prune_time_s")
    return [f"{run['pruned_top1']:.2f}" if run.get("pruned_top1") is not None else DASH, f"{run['top1']:.2f}",
            DASH if seconds is None else f"{seconds:.0f}"]


def table_baselines(runs):
    headers = ["Model", "r"] + [f"{label} {c}" for label, _ in METHODS for c in ("pruned", "finetuned", "prune s")]
    rows, notes = [], []
    for model in MODELS:
        for pct in RATIOS:
            cells = [NAMES[model], f"{pct / 100:.2f}"]
            for label, method in METHODS:
                acc, _, refused = find_run(runs, experiment(model, pct, method))
                cells += _cells(acc)
                notes += [f"{NAMES[model]} r={pct / 100:.2f} {label}: " + (f"`{acc['folder']}`" if acc else "no run")]
                notes += [f"{NAMES[model]} r={pct / 100:.2f} {label}: {r}" for r in refused]
            rows.append(cells)
    return headers, rows, notes
