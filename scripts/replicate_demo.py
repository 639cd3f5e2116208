"""The shape of the paper's Tables 3 and 4 on the embedded demo (mnist5k), on CPU, over dense seeds, for the
hierarchical nano Swin or the isotropic nano ViT (same data, criteria, seeds and recipe).

    python scripts/replicate_demo.py --threads 1                    # nano Swin, 3 dense seeds; results/demo/
    python scripts/replicate_demo.py --threads 1 --model vit_nano   # nano ViT alone; results/demo/vit_nano/
    python scripts/replicate_demo.py --seeds 0 --dense-epochs 1 --shares 50 --finetune-epochs 1 \
        --out outputs/demo_smoke train.max_steps_per_epoch=2 data.val_size=100       # a smoke run

Per seed, one dense model (conf/experiment/demo_replication.yaml: 1,500 AdamW steps; cached in --cache-dir, so
a rerun skips it), then
- Table 3: every criterion, no finetuning, at each share of ALL parameters removed. The per-module ratio is
  r = share x params_total / prunable_weights; a share above prunable / total cannot be reached and is skipped.
- Table 4: the --finetune-criteria at r = 0.55 (DIMAP3), pruned, then finetuned with the mask fixed
  (train/demo.yaml: 2 epochs), each from the same dense model; also at r = 0.925, where this model degrades.
Writes rows.csv and rows.json (one row per seed x criterion x point; the JSON also holds config, git commit and
versions), summary.md and replication.png. Trailing key=value arguments are Hydra overrides for every seed.
"""
import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py: spinning OpenMP threads crawl on a shared CPU
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from dimap.pruning.accounting import account  # noqa: E402
from dimap.training.checkpoint import seed_everything  # noqa: E402
from dimap.training.data import build_loaders  # noqa: E402
from dimap.training.engine import evaluate  # noqa: E402
from dimap.training.finetune import finetune  # noqa: E402
from dimap.pruning.masks import apply_masks, compute_masks  # noqa: E402
from dimap.models import build_model  # noqa: E402
from dimap.pruning.modules import prunable_weights  # noqa: E402
from dimap.training.pretrain import pretrain_dense, pretrain_recipe  # noqa: E402
from dimap.provenance import git_commit, portable, versions  # noqa: E402
from dimap.training.recipe import resolve_batches  # noqa: E402
from replicate_report import CRITERIA, plot, summary_markdown  # noqa: E402

MODELS = {"swin_nano": "", "vit_nano": "vit_nano"}  # conf/model file -> its subfolder of RESULTS
RESULTS = ROOT / "results" / "demo"
FIELDS = ("model", "table", "seed", "criterion", "share_removed_pct", "ratio", "params_total", "prunable_weights",
          "params_nonzero", "params_removed_pct", "top1", "top5", "finetuned", "finetune_epochs", "dense_top1",
          "dense_top5", "dense_steps")


def compose(seed: int, args) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    overrides = [f"experiment={args.experiment}", f"model={args.model}", f"seed={seed}",
                 f"paths.cache_dir={args.cache_dir}"]
    if args.dense_epochs is not None:
        overrides.append(f"pretrain.epochs={args.dense_epochs}")
    if args.finetune_epochs is not None:
        overrides.append(f"train.epochs={args.finetune_epochs}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides + list(args.overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def ratio_for_share(share_pct: float, params_total: int, prunable: int) -> float | None:
    """Per-module ratio removing share_pct % of ALL parameters; None when the prunable weights are too few."""
    r = share_pct / 100 * params_total / prunable
    return r if r < 1 else None


def evaluate_masked(model, dense_sd, method, ratio, val_loader, device):
    """(masks, accounting, eval) of the dense model pruned by `method` at `ratio`, without finetuning."""
    model.load_state_dict(dense_sd)
    masks = compute_masks(model, method, ratio)
    apply_masks(model, masks)
    ev = evaluate(model, val_loader, device, progress=False, desc=f"{method} r={ratio:.3f}")
    return masks, ev


def run_seed(seed: int, args, device, log) -> tuple[list[dict], dict]:
    config = compose(seed, args)
    seed_everything(seed)
    model = build_model(config["model"]).to(device)
    rc = pretrain_recipe(config)
    pre_bs = resolve_batches(rc, 1).per_process
    tc = config["train"]
    ft_loader, val_loader, num_classes = build_loaders(config["data"], resolve_batches(tc, 1).per_process,
                                                       tc["eval_batch_size"], seed=seed)
    t0 = time.time()
    pre = pretrain_dense(model, config, device, config["paths"]["cache_dir"], log=log)
    n_train = len(ft_loader.dataset)
    steps_per_epoch = n_train // pre_bs if rc.get("max_steps_per_epoch") is None else min(
        n_train // pre_bs, int(rc["max_steps_per_epoch"]))
    dense = {"seed": seed, "dense_top1": pre["top1"], "dense_top5": pre["top5"],
             "dense_steps": int(rc["epochs"]) * steps_per_epoch, "cache": pre["cache"], "cached": pre["cached"],
             "pretrain_s": round(time.time() - t0, 1)}
    dense_sd = {k: v.clone() for k, v in model.state_dict().items()}
    params_total = sum(p.numel() for p in model.parameters())
    prunable = sum(p.numel() for p in prunable_weights(model).values())
    flops = {n: 0 for n, _ in model.named_modules()}  # params only: account() needs a FLOPs entry per layer
    base = dict(model=args.model, seed=seed, params_total=params_total, prunable_weights=prunable, dense_top1=pre["top1"],
                dense_top5=pre["top5"], dense_steps=dense["dense_steps"])

    def row(table, method, share, ratio, masks, ev, finetuned, epochs=0):
        acc = account(model, masks, 0, flops=flops)
        return dict(base, table=table, criterion=method, share_removed_pct=share, ratio=round(ratio, 6),
                    params_nonzero=acc["params_nonzero"], params_removed_pct=round(acc["params_reduction_pct"], 3),
                    top1=ev["top1"], top5=ev["top5"], finetuned="yes" if finetuned else "no", finetune_epochs=epochs)

    rows = []
    for share in args.shares:
        ratio = ratio_for_share(share, params_total, prunable)
        if ratio is None:
            continue
        for method in args.criteria:
            masks, ev = evaluate_masked(model, dense_sd, method, ratio, val_loader, device)
            rows.append(row("table3", method, share, ratio, masks, ev, False))
        log(f"seed {seed}, {share}% removed (r={ratio:.3f}): " +
            ", ".join(f"{r['criterion']} {r['top1']:.1f}" for r in rows[-len(args.criteria):]))

    for ratio in args.finetune_ratios:
        share = round(100 * ratio * prunable / params_total, 2)
        for method in args.finetune_criteria:
            masks, ev = evaluate_masked(model, dense_sd, method, ratio, val_loader, device)
            rows.append(row("table4", method, share, ratio, masks, ev, False))
            with tempfile.TemporaryDirectory() as tmp:  # finetune() checkpoints every epoch; nothing here resumes
                fit = finetune(model, masks, ft_loader, val_loader, num_classes, config, device, tmp,
                               log=lambda *a: None)
            final = fit["final"] or ev
            rows.append(row("table4", method, share, ratio, masks, final, True, int(tc["epochs"])))
            log(f"seed {seed}, r={ratio}: {method} pruned {ev['top1']:.1f} -> finetuned {final['top1']:.1f}")
    return rows, dict(dense, config=config, params_total=params_total, prunable_weights=prunable)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="dense seeds (one dense model each)")
    p.add_argument("--dense-epochs", type=int, help="pretraining epochs (default: the experiment's, 12)")
    p.add_argument("--shares", type=float, nargs="+", default=[19, 28, 38, 50, 70, 75, 80, 85, 87.5, 90, 95, 98],
                   help="%% of ALL parameters removed (Table 3)")
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA, help="Table 3 criteria")
    p.add_argument("--finetune-criteria", nargs="*", default=["dimap", "single_module", "global_magnitude"],
                   choices=CRITERIA, help="Table 4 criteria (none: skip Table 4)")
    p.add_argument("--finetune-ratios", type=float, nargs="+", default=[0.55, 0.925],
                   help="Table 4 per-module ratios: 0.55 is DIMAP3; 0.925 (85%% removed) is where this model degrades")
    p.add_argument("--finetune-epochs", type=int, help="finetuning epochs (default: train/demo.yaml's, 2)")
    p.add_argument("--experiment", default="demo_replication")
    p.add_argument("--model", default="swin_nano", choices=MODELS,
                   help="conf/model file: the hierarchical nano Swin or the isotropic nano ViT")
    p.add_argument("--out", type=Path, help="default: results/demo, or results/demo/vit_nano for --model vit_nano")
    p.add_argument("--cache-dir", default=os.environ.get("DIMAP_CACHE", str(ROOT / ".cache" / "dimap")))
    p.add_argument("--threads", type=int, help="torch CPU threads (on a busy shared machine 1 can be faster)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every seed, e.g. data.val_size=100")
    args = p.parse_args(argv)
    args.out = args.out or RESULTS / MODELS[args.model]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    t0 = time.time()
    rows, denses = [], []
    for seed in args.seeds:
        seed_rows, dense = run_seed(seed, args, device, log)
        rows += seed_rows
        denses.append(dense)
    total, prunable = denses[0]["params_total"], denses[0]["prunable_weights"]
    skipped = [s for s in args.shares if ratio_for_share(s, total, prunable) is None]
    if skipped:
        log(f"skipped {skipped}% removed: only {100 * prunable / total:.2f}% of the parameters are prunable")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "rows.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    meta = {"command": "python scripts/replicate_demo.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "git_commit": git_commit(), "versions": versions(), "device": str(device),
            "threads": torch.get_num_threads(), "wall_time_s": round(time.time() - t0, 1),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "prunable_share_pct": 100 * prunable / total, "skipped_shares_pct": skipped,
            "ratio_mapping": "r = share_removed_pct / 100 * params_total / prunable_weights",
            "dense": denses, "rows": rows}
    meta = portable(meta, ROOT)  # paths relative to the clone (the cache, --out): no machine's folders in records
    (args.out / "rows.json").write_text(json.dumps(meta, indent=1) + "\n")
    (args.out / "summary.md").write_text(summary_markdown(rows, denses, skipped))
    plot(rows, denses, args.out / "replication.png")
    log((args.out / "summary.md").read_text())
    log(f"wrote {args.out}/rows.csv, rows.json, summary.md, replication.png in {time.time() - t0:.0f} s")
    return meta


if __name__ == "__main__":
    main()
