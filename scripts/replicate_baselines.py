"""The small replication (scripts/replicate_demo.py) with the data-aware baselines: Wanda, module-aware Wanda and
SparseGPT beside DIMAP and magnitude pruning, on the same cached dense nano Swins, the same shares and ratios, the
same finetuning, with the seconds each takes to prune.

    python scripts/replicate_baselines.py --threads 1                 # results/demo/baselines/
    python scripts/replicate_baselines.py --seeds 0 --shares 50 --finetune-ratios 0.55 --out outputs/smoke_baselines \\
        train.max_steps_per_epoch=2 data.val_size=100                  # a smoke run

Per seed: the dense model from the pretraining cache (--cache-dir; a seed without one is skipped and named,
unless --pretrain), calibration images drawn once (training split, evaluation transform, --calibration-images,
seed 0), then Table 3 (no finetuning, every criterion at every share of ALL parameters) and Table 4 (pruned and
finetuned at r = 0.55 and 0.925). Wanda's input norms do not depend on the ratio: they are collected once per
seed, and a Wanda row's prune_s is that collection plus its own masks. SparseGPT runs again at every ratio (its
later blocks see the pruned earlier ones). Rows, summary and plot are rewritten after every seed.
"""
import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from dimap.pruning.accounting import account  # noqa: E402
from dimap.pruning.calibration import draw_calibration  # noqa: E402
from dimap.pruning.masks import apply_masks, compute_masks  # noqa: E402
from dimap.pruning.modules import prunable_weights  # noqa: E402
from dimap.pruning.wanda import wanda, wanda_module, wanda_score_tensors  # noqa: E402
from dimap.provenance import git_commit, versions  # noqa: E402
from dimap.models import build_model  # noqa: E402
from dimap.training.calibration_data import calibration_dataset  # noqa: E402
from dimap.training.checkpoint import seed_everything  # noqa: E402
from dimap.training.data import build_loaders  # noqa: E402
from dimap.training.engine import evaluate  # noqa: E402
from dimap.training.finetune import finetune  # noqa: E402
from dimap.training.pretrain import pretrain_dense, pretrain_key  # noqa: E402
from dimap.training.recipe import resolve_batches  # noqa: E402
from replicate_demo import FIELDS, compose, ratio_for_share  # noqa: E402
from replicate_report import plot, summary_markdown  # noqa: E402

DATA_FREE = ("uniform", "global_magnitude", "dimap")
BASELINES = ("wanda", "wanda_module", "sparsegpt")
CRITERIA = DATA_FREE + BASELINES
WANDA = {"wanda": wanda, "wanda_module": wanda_module}


def cache_path(config: dict, cache_dir: str) -> Path:
    return Path(cache_dir) / "pretrain" / f"{config['model']['short']}_{pretrain_key(config, 1)}.pt"


def run_seed(seed, args, device, log, progress=lambda rows, dense: None, previous=()):
    config = compose(seed, args)
    if not args.pretrain and not cache_path(config, args.cache_dir).is_file():
        log(f"seed {seed}: no dense model in {cache_path(config, args.cache_dir)}: skipped (--pretrain trains it)")
        return None
    seed_everything(seed)
    model = build_model(config["model"]).to(device)
    tc = config["train"]
    ft_loader, val_loader, num_classes = build_loaders(config["data"], resolve_batches(tc, 1).per_process,
                                                       tc["eval_batch_size"], seed=seed)
    pre = pretrain_dense(model, config, device, args.cache_dir, log=log)
    dense_sd = {k: v.clone() for k, v in model.state_dict().items()}
    params_total = sum(p.numel() for p in model.parameters())
    prunable = sum(p.numel() for p in prunable_weights(model).values())
    cal = draw_calibration(calibration_dataset(config["data"]), args.calibration_images, 0, args.calibration_batch)
    flops = {n: 0 for n, _ in model.named_modules()}
    base = dict(model=config["model"]["short"], seed=seed, params_total=params_total, prunable_weights=prunable,
                dense_top1=pre["top1"], dense_top5=pre["top5"], calibration_images=len(cal.indices))
    t0 = time.perf_counter()
    wanda_scores = wanda_score_tensors(prunable_weights(model), model, lambda: cal.batches(device))
    norms_s = time.perf_counter() - t0

    def prune(method, ratio):
        """(masks, seconds): the model holds the pruned (for sparsegpt: updated) weights."""
        model.load_state_dict(dense_sd)
        t0 = time.perf_counter()
        if method in WANDA:
            masks = WANDA[method](prunable_weights(model), ratio, model=model, batches=None, scores=wanda_scores)
        else:
            masks = compute_masks(model, method, ratio, calibration=cal)
        seconds = time.perf_counter() - t0 + (norms_s if method in WANDA else 0.0)
        apply_masks(model, masks)
        return masks, seconds

    def row(table, method, share, ratio, masks, ev, seconds, finetuned, epochs=0):
        acc = account(model, masks, 0, flops=flops)
        return dict(base, table=table, criterion=method, share_removed_pct=share, ratio=round(ratio, 6),
                    params_nonzero=acc["params_nonzero"], params_removed_pct=round(acc["params_reduction_pct"], 3),
                    top1=ev["top1"], top5=ev["top5"], prune_s=round(seconds, 3),
                    finetuned="yes" if finetuned else "no", finetune_epochs=epochs)

    steps = int(config["pretrain"]["epochs"]) * (len(ft_loader.dataset) // resolve_batches(
        {**tc, **config["pretrain"]}, 1).per_process)
    base["dense_steps"] = steps
    shown = {**config, "paths": {k: "${DIMAP_CACHE}" if k == "cache_dir" else v for k, v in config["paths"].items()}}
    dense = {"seed": seed, "dense_top1": pre["top1"], "dense_top5": pre["top5"], "dense_steps": steps,
             "cache": Path(pre["cache"]).name, "cached": pre["cached"], "calibration": cal.record(),
             "wanda_norms_s": round(norms_s, 3), "config": shown, "params_total": params_total,
             "prunable_weights": prunable}
    rows = [r for r in previous if r["seed"] == seed]  # --resume: what an interrupted run already wrote
    done = {(r["table"], r["criterion"], r["ratio"]) for r in rows}

    def table4(ratio):
        share = round(100 * ratio * prunable / params_total, 2)
        for method in args.finetune_criteria:
            if ("table4", method, round(ratio, 6)) in done:
                continue
            masks, seconds = prune(method, ratio)
            ev = evaluate(model, val_loader, device, progress=False)
            rows.append(row("table4", method, share, ratio, masks, ev, seconds, False))
            with tempfile.TemporaryDirectory() as tmp:
                fit = finetune(model, masks, ft_loader, val_loader, num_classes, config, device, tmp,
                               log=lambda *a: None)
            final = fit["final"] or ev
            rows.append(row("table4", method, share, ratio, masks, final, seconds, True, int(tc["epochs"])))
            log(f"seed {seed}, r={ratio}: {method} pruned {ev['top1']:.1f} -> finetuned {final['top1']:.1f}")
            progress(rows, dense)

    def table3():
        for share in args.shares:
            ratio = ratio_for_share(share, params_total, prunable)
            if ratio is None:
                continue
            for method in args.criteria:
                if ("table3", method, round(ratio, 6)) in done:
                    continue
                masks, seconds = prune(method, ratio)
                ev = evaluate(model, val_loader, device, progress=False)
                rows.append(row("table3", method, share, ratio, masks, ev, seconds, False))
            progress(rows, dense)
            log(f"seed {seed}, {share}% removed (r={ratio:.3f}): " + ", ".join(
                f"{r['criterion']} {r['top1']:.1f} ({r['prune_s']:.1f} s)" for r in rows
                if r["table"] == "table3" and r["ratio"] == round(ratio, 6)))

    # the first Table 4 ratio, then Table 3, then the other ratios: an interrupted run has the informative rows
    for ratio in args.finetune_ratios[:1]:
        table4(ratio)
    table3()
    for ratio in args.finetune_ratios[1:]:
        table4(ratio)
    return rows, dense


def prune_seconds(rows) -> str:
    lines = ["", "## Seconds to prune (median over every row of the criterion, [min, max])", "",
             "| criterion | median s | min | max |", "|---|---|---|---|"]
    for m in CRITERIA:
        t = sorted(r["prune_s"] for r in rows if r["criterion"] == m and r["finetuned"] == "no"
                   and not r.get("source") and r.get("prune_s") is not None)
        if t:
            lines.append(f"| {m} | {statistics.median(t):.2f} | {t[0]:.2f} | {t[-1]:.2f} |")
    return "\n".join(lines) + "\n"


def beside(rows, denses, path: Path) -> list[dict]:
    """The finetuned DIMAP and magnitude rows of the main replication (`path`, scripts/replicate_demo.py's
    rows.json) for the seeds whose dense model is the very same file as ours (same cache name); none otherwise."""
    if not path.is_file() or not denses:
        return []
    other = json.loads(path.read_text())
    same = {d["seed"] for d in other.get("dense", []) for mine in denses
            if d["seed"] == mine["seed"] and Path(d["cache"]).name == mine["cache"]}
    have = {(r["criterion"], r["seed"], r["ratio"], r["finetuned"]) for r in rows}
    return [{**r, "source": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name}
            for r in other["rows"] if r["table"] == "table4" and r["criterion"] in DATA_FREE and r["seed"] in same
            and (r["criterion"], r["seed"], r["ratio"], r["finetuned"]) not in have]


def write(out: Path, rows, denses, skipped, meta) -> None:
    source = Path(meta["args"].get("beside") or "")
    rows = rows + beside(rows, denses, source if source.is_absolute() else ROOT / source)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rows.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=(*FIELDS, "prune_s", "calibration_images"), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "rows.json").write_text(json.dumps({**meta, "dense": denses, "rows": rows}, indent=1) + "\n")
    borrowed = sorted({(r["criterion"], r["source"]) for r in rows if r.get("source")})
    note = ("\n".join(f"\nTable 4's {c} rows: from `{src}` (the same dense models)." for c, src in borrowed)
            or "\nTable 4 holds only the data-aware rows run here: DIMAP's and magnitude's finetuned rows come from "
               "the main replication (--beside) only when its dense models are the same files, which they are not "
               "for the seeds above.") + "\n"
    (out / "summary.md").write_text(summary_markdown(rows, denses, skipped, CRITERIA) + prune_seconds(rows) + note)
    plot(rows, denses, out / "replication.png", CRITERIA)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shares", type=float, nargs="+", default=[19, 28, 38, 50, 70, 75, 80, 85, 87.5, 90])
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    p.add_argument("--finetune-criteria", nargs="*", default=["dimap", "global_magnitude", *BASELINES],
                   choices=CRITERIA)
    p.add_argument("--finetune-ratios", type=float, nargs="+", default=[0.55, 0.925])
    p.add_argument("--finetune-epochs", type=int)
    p.add_argument("--dense-epochs", type=int)
    p.add_argument("--calibration-images", type=int, default=256,
                   help="training images to calibrate on (prune.calibration.images; 256 keeps SparseGPT's CPU "
                        "cost at every ratio within the run's budget)")
    p.add_argument("--calibration-batch", type=int, default=256)
    p.add_argument("--experiment", default="demo_replication")
    p.add_argument("--model", default="swin_nano")
    p.add_argument("--pretrain", action="store_true", help="train a seed's dense model when it is not cached")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "demo" / "baselines")
    p.add_argument("--cache-dir", default=os.environ.get("DIMAP_CACHE", str(ROOT / ".cache" / "dimap")))
    p.add_argument("--threads", type=int)
    p.add_argument("--beside", type=Path, default=ROOT / "results" / "demo" / "rows.json",
                   help="the main replication's rows.json: its finetuned dimap/magnitude rows join Table 4 when its "
                        "dense models are ours")
    p.add_argument("--resume", action="store_true", help="keep the rows --out/rows.json already holds, run the rest")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite summary.md, rows.csv and the plot from --out/rows.json (e.g. after --beside changed)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if args.report_only:
        done = json.loads((args.out / "rows.json").read_text())
        rows = [r for r in done["rows"] if not r.get("source")]
        meta = {k: v for k, v in done.items() if k not in ("dense", "rows")}
        meta["args"]["beside"] = str(args.beside)
        write(args.out, rows, done["dense"], meta.get("skipped_shares_pct", []), meta)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    t0, rows, denses = time.time(), [], []
    previous, earlier = [], []
    if args.resume and (args.out / "rows.json").is_file():
        before = json.loads((args.out / "rows.json").read_text())
        previous = [r for r in before["rows"] if not r.get("source")]
        earlier = before.get("commands") or [before["command"]]  # the runs whose rows are kept
    argv_shown = sys.argv[1:] if argv is None else argv
    def progress(seed_rows, dense, final=False):
        done = rows + seed_rows
        all_dense = denses + [dense]
        skipped = [s for s in args.shares
                   if ratio_for_share(s, dense["params_total"], dense["prunable_weights"]) is None]
        command = "python scripts/replicate_baselines.py " + " ".join(argv_shown)
        meta = {"command": command, "commands": earlier + [command],
                "git_commit": git_commit(), "versions": versions(), "device": str(device),
                "threads": torch.get_num_threads(), "wall_time_s": round(time.time() - t0, 1),
                "seeds_done": [d["seed"] for d in denses] + ([dense["seed"]] if final else []),
                "seed_in_progress": None if final else dense["seed"], "seeds_asked": args.seeds,
                "args": {k: str(v.relative_to(ROOT)) if isinstance(v, Path) and v.is_relative_to(ROOT) else
                         (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "cache_dir"},
                "ratio_mapping": "r = share_removed_pct / 100 * params_total / prunable_weights",
                "skipped_shares_pct": skipped}
        write(args.out, done, all_dense, skipped, meta)

    for seed in args.seeds:
        result = run_seed(seed, args, device, log, progress, previous)
        if result is None:
            continue
        progress(*result, final=True)
        rows += result[0]
        denses.append(result[1])
        log(f"seed {seed} done; wrote {args.out} ({time.time() - t0:.0f} s so far)")
    if not denses:
        sys.exit("no seed has a cached dense model: run scripts/replicate_demo.py first, or pass --pretrain")
    log((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
