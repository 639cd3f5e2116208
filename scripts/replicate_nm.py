"""2:4 sparsity on the embedded demo (mnist5k, nano Swin, CPU), beside unstructured DIMAP at the same ratios:
pruned, then finetuned with the mask fixed, from the same cached dense models as scripts/replicate_demo.py.

    python scripts/replicate_nm.py --threads 1                       # seeds 0 1 2; results/demo/nm/
    python scripts/replicate_nm.py --seeds 0 --dense-epochs 1 --finetune-epochs 1 --out outputs/smoke_nm \
        train.max_steps_per_epoch=2 data.val_size=100                # a smoke run

Rows per seed and ratio r (share of each module's prunable weights removed):
- dimap, unstructured (the paper), pruned and finetuned;
- dimap, 2:4 with the module-aware allocation (prune.nm_allocation=auto -> module), pruned and finetuned;
- baselines at r < 0.5, pruned only: 2:4 with the earliest layers first (nm_allocation=first), and
  global_magnitude 2:4 (the layers of least |w| loss over the whole model, nm_allocation=auto -> global);
- at r = 0.5 (every eligible layer 2:4) global_magnitude 2:4: its masks are checked bit-identical to dimap's
  (within a group of 4 both keep the 2 largest |w|); its finetuned row is then dimap's run, marked so.
Writes rows.csv, rows.json (command, git commit, versions, config, rows) and summary.md; each finished seed's
rows also go to seeds/seed_S.json, which the same command reads back instead of running that seed again.
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from dimap.pruning.masks import apply_masks, compute_masks, mask_checksum  # noqa: E402
from dimap.pruning.patterns import layer_kind  # noqa: E402
from dimap.models import build_model  # noqa: E402
from dimap.provenance import git_commit, versions  # noqa: E402
from dimap.training.checkpoint import seed_everything  # noqa: E402
from dimap.training.data import build_loaders  # noqa: E402
from dimap.training.engine import evaluate  # noqa: E402
from dimap.training.finetune import finetune  # noqa: E402
from dimap.training.pretrain import pretrain_dense  # noqa: E402
from dimap.training.recipe import resolve_batches  # noqa: E402
from replicate_demo import compose  # noqa: E402
from replicate_report import spread  # noqa: E402

FIELDS = ("seed", "criterion", "pattern", "allocation", "ratio", "ratio_achieved", "nm_layers", "dense_layers",
          "top1", "top5", "finetuned", "finetune_epochs", "pattern_intact", "mask_checksum", "same_masks_as",
          "dense_top1")


def variants(ratio: float) -> list[tuple[str, str, str, bool]]:
    """(criterion, pattern, allocation, finetune) of the rows at `ratio`."""
    rows = [("dimap", "unstructured", "auto", True), ("dimap", "2:4", "auto", True)]
    if ratio < 0.5:
        return rows + [("dimap", "2:4", "first", False), ("global_magnitude", "2:4", "auto", False)]
    return rows + [("global_magnitude", "2:4", "auto", True)]


def intact(model, masks: dict, pattern: str) -> bool:
    """Every pruned weight exactly zero, and with 2:4 every layer's mask dense or exactly 2:4 (so the weights
    have at most 2 non-zeros in every group of 4 of a 2:4 layer)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if bool(((params[name].detach().cpu() != 0) & ~mask).any()):
            return False
        if pattern == "2:4" and layer_kind(mask, 2, 4) not in ("dense", "2:4"):
            return False
    return True


def run_seed(seed: int, args, device, log) -> tuple[list[dict], dict]:
    config = compose(seed, args)
    seed_everything(seed)
    model = build_model(config["model"]).to(device)
    tc = config["train"]
    ft_loader, val_loader, num_classes = build_loaders(config["data"], resolve_batches(tc, 1).per_process,
                                                       tc["eval_batch_size"], seed=seed)
    pre = pretrain_dense(model, config, device, config["paths"]["cache_dir"], log=log)
    dense_sd = {k: v.clone() for k, v in model.state_dict().items()}
    rows, finetuned_by_checksum = [], {}
    for ratio in args.ratios:
        for method, pattern, allocation, tune in variants(ratio):
            model.load_state_dict(dense_sd)
            record = {}
            masks = compute_masks(model, method, ratio, pattern=pattern, allocation=allocation, record=record)
            apply_masks(model, masks)
            ev = evaluate(model, val_loader, device, progress=False)
            kept = sum(int(m.sum()) for m in masks.values())
            total = sum(m.numel() for m in masks.values())
            checksum = mask_checksum(masks)
            base = dict(seed=seed, criterion=method, pattern=pattern, allocation=record.get("allocation", "-"),
                        ratio=ratio, ratio_achieved=round(1 - kept / total, 6),
                        nm_layers=len(record.get("nm_layers", [])),
                        dense_layers=len(record.get("dense_layers", masks)), mask_checksum=checksum,
                        dense_top1=pre["top1"], same_masks_as="")
            rows.append(dict(base, top1=ev["top1"], top5=ev["top5"], finetuned="no", finetune_epochs=0,
                             pattern_intact=intact(model, masks, pattern)))
            if not tune:
                continue
            if checksum in finetuned_by_checksum:  # bit-identical masks, same dense model, same seed: same run
                same = finetuned_by_checksum[checksum]
                rows.append(dict(base, top1=same["top1"], top5=same["top5"], finetuned="yes",
                                 finetune_epochs=same["finetune_epochs"], pattern_intact=same["pattern_intact"],
                                 same_masks_as=f"{same['criterion']} {same['pattern']}"))
                continue
            with tempfile.TemporaryDirectory() as tmp:
                fit = finetune(model, masks, ft_loader, val_loader, num_classes, config, device, tmp,
                               log=lambda *a: None)
            final = fit["final"] or ev
            rows.append(dict(base, top1=final["top1"], top5=final["top5"], finetuned="yes",
                             finetune_epochs=int(tc["epochs"]), pattern_intact=intact(model, masks, pattern)))
            finetuned_by_checksum[checksum] = rows[-1]
            log(f"seed {seed} r={ratio} {method} {pattern} {base['allocation']}: achieved {base['ratio_achieved']:.3f}, "
                f"pruned {ev['top1']:.1f} -> finetuned {final['top1']:.1f}")
    config["paths"]["cache_dir"] = "$DIMAP_CACHE"  # records hold no machine's paths (--cache-dir is one)
    return rows, {"seed": seed, "dense_top1": pre["top1"], "cache": pre["cache"], "config": config}


def summary_markdown(rows: list[dict], denses: list[dict]) -> str:
    seeds = sorted({d["seed"] for d in denses})
    cfg = denses[0]["config"]
    lines = [f"2:4 sparsity vs unstructured DIMAP on the demo ({cfg['model']['short']}, {cfg['data']['name']}, "
             f"{cfg['data'].get('val_size')} validation images), dense seeds {seeds}; top-1 (%) as mean ± std "
             "[min, max] over seeds. r = share of each module's prunable weights asked; achieved = share removed "
             "(2:4 layers are whole: the smallest-cost set of layers removing at least r of each module).", "",
             f"Dense models: top-1 {spread([d['dense_top1'] for d in denses])}.", "",
             "| r | criterion | pattern | allocation | achieved | 2:4 layers | pruned | finetuned |",
             "|---|---|---|---|---|---|---|---|"]
    keys = []
    for r in rows:
        k = (r["ratio"], r["criterion"], r["pattern"], r["allocation"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        same = [r for r in rows if (r["ratio"], r["criterion"], r["pattern"], r["allocation"]) == k]
        pruned = [r["top1"] for r in same if r["finetuned"] == "no"]
        tuned = [r for r in same if r["finetuned"] == "yes"]
        note = f" (= {tuned[0]['same_masks_as']}: identical masks)" if tuned and tuned[0]["same_masks_as"] else ""
        cells = [f"{k[0]:g}", k[1], k[2], k[3],
                 spread([r["ratio_achieved"] * 100 for r in same if r["finetuned"] == "no"]) + "%",
                 f"{same[0]['nm_layers']}", spread(pruned),
                 (spread([r["top1"] for r in tuned]) + note) if tuned else "not run"]
        lines.append("| " + " | ".join(cells) + " |")
    broken = [r for r in rows if not r["pattern_intact"]]
    lines += ["", "Baselines (allocation `first`: earliest layers of each module first; `global`: the layers of least "
              "|w| loss over the whole model) were pruned only, not finetuned. At r = 0.5 every layer is 2:4 and "
              "dimap and global_magnitude give bit-identical masks (checked by checksum in every seed), so the "
              "magnitude row's finetuned figure is dimap's run.", "", "Pattern intact after finetuning (every pruned weight zero, every 2:4 layer still 2:4): "
              + ("yes, in every row." if not broken else f"NO in {len(broken)} rows.")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.35, 0.5])
    p.add_argument("--dense-epochs", type=int, help="pretraining epochs (default: the experiment's, 12)")
    p.add_argument("--finetune-epochs", type=int, help="finetuning epochs (default: train/demo.yaml's, 2)")
    p.add_argument("--experiment", default="demo_replication")
    p.add_argument("--model", default="swin_nano")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "demo" / "nm")
    p.add_argument("--cache-dir", default=os.environ.get("DIMAP_CACHE", str(ROOT / ".cache" / "dimap")))
    p.add_argument("--threads", type=int)
    p.add_argument("--rerun", action="store_true", help="run seeds again whose rows are in OUT/seeds/")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every seed")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    t0, rows, denses = time.time(), [], []
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # a seed finished by an earlier run of the same command is read back, not rerun
        done = args.out / "seeds" / f"seed_{seed}.json"
        if done.is_file() and not args.rerun:
            seed_rows, dense = json.loads(done.read_text()).values()
            log(f"seed {seed}: read back from {done.relative_to(args.out)} (--rerun to run it again)")
        else:
            seed_rows, dense = run_seed(seed, args, device, log)
            dense["cache"] = os.path.relpath(dense["cache"], args.cache_dir)
            done.parent.mkdir(exist_ok=True)
            done.write_text(json.dumps({"rows": seed_rows, "dense": dense}, default=str) + "\n")
        rows += seed_rows
        denses.append(dense)
    with open(args.out / "rows.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    meta = {"command": "python scripts/replicate_nm.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "git_commit": git_commit(), "versions": versions(), "device": str(device),
            "threads": torch.get_num_threads(), "wall_time_s": round(time.time() - t0, 1),
            "args": {k: (os.path.relpath(v, ROOT) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k != "cache_dir"}, "cache_dir": "$DIMAP_CACHE", "dense": denses, "rows": rows}
    (args.out / "rows.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    (args.out / "summary.md").write_text(summary_markdown(rows, denses))
    log((args.out / "summary.md").read_text())
    log(f"wrote {args.out}/rows.csv, rows.json, summary.md in {time.time() - t0:.0f} s")
    return meta


if __name__ == "__main__":
    main()
