"""Prune a dense Swin one-shot (same code path as prune.py), finetune it with the mask held fixed, evaluate.

    python train.py                                       # the embedded demo: nano Swin on MNIST, CPU, ~2 min
    torchrun --nproc_per_node=8 train.py experiment=table1/swin_t_dimap3 data.root=/data/imagenet
    python train.py -m hydra/launcher=slurm +paper=table1 data.root=/data/imagenet   # a paper table on Slurm

Writes to output_dir (rank 0 only): summary.json (last: marks a finished run), log.jsonl, model.safetensors +
masks.safetensors, checkpoints/{last,prev,best}.pt and wandb/. The same command again resumes from last.pt (also
mid-epoch, after SIGTERM/SIGUSR1), or skips a finished run; a second run into a busy output_dir is refused.
"""
# ruff: noqa: E402  (the environment is set before torch is imported)
import os

# OpenMP threads that spin while they wait make a busy or shared CPU up to 10x slower on small ops (measured on the
# demo, 2 cores); PASSIVE lets them sleep. It must be set before torch loads OpenMP; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from dimap.pruning.accounting import account
from dimap.training.checkpoint import check_resumable, load_latest, seed_everything
from dimap.training.data import build_loaders
from dimap.training.cluster import Preemption, hold_output_dir, link_submitit_logs
from dimap.training.distributed import (all_gather_object, cleanup, env_from_submitit, init_distributed,
                                       on_main_shared)
from dimap.training.engine import evaluate
from dimap.errors import UserError, check_config_groups, exit_on_user_error
from dimap.training.finetune import check_masks, finetune
from dimap.training.calibration_data import masks_for_training_run
from dimap.pruning.masks import apply_masks, check_method, check_module_ratios, check_pattern, check_ratio
from dimap.models import build_model
from dimap.training.pretrain import pretrain_dense
from dimap.training.rank_failure import FailTogether
from dimap.pruning.pruned_file import save_pruned
from dimap.pruning.semi_structured import check_available
from dimap.training.sparse_eval import evaluate_semi_structured
from dimap.training.recipe import amp_dtype, eval_amp_dtype, resolve_batches
from dimap.report import (check_output_dir, finished_summary, format_table, prune_summary, results_table,
                          write_json)
from dimap.training.wandb_logger import WandbLogger


def validate(model, loader, device, dtype, progress: bool, desc: str) -> dict:
    ev = evaluate(model, loader, device, amp_dtype=dtype, progress=progress, desc=desc)
    if ev["n"] != len(loader.dataset):  # a sharding bug would silently skew every accuracy reported
        raise RuntimeError(f"evaluated {ev['n']} validation images, the set has {len(loader.dataset)}")
    return ev


@exit_on_user_error
def run(cfg: DictConfig) -> dict | None:
    with contextlib.ExitStack() as held:  # the output folder's lock, released however the run ends
        return _run(cfg, held)


def _run(cfg: DictConfig, held: contextlib.ExitStack) -> dict | None:
    t_start = time.time()
    config = OmegaConf.to_container(cfg, resolve=True)
    tc, method, ratio = config["train"], cfg.prune.method, check_ratio(cfg.prune.ratio)
    if method != "none":  # none: evaluate (or finetune) the weights as they are, masks from their zeros
        check_method(method)
    module_ratios = check_module_ratios(config["prune"].get("module_ratios"), ratio)
    pattern = check_pattern(config["prune"], method, ratio, module_ratios)
    if pattern["semi_structured"]:  # refused before anything is written where 2:4 kernels cannot run
        check_available(cfg.device if cfg.device != "auto" else "cuda")
    if tc["nonfinite"] not in ("stop", "skip"):
        raise UserError(f"train.nonfinite={tc['nonfinite']!r} is unknown: pass train.nonfinite=stop or skip")
    if not isinstance(tc["epochs"], int) or tc["epochs"] < 0:
        raise UserError(f"train.epochs={tc['epochs']!r} must be a whole number >= 0 (0 = prune and evaluate only)")
    out = Path(cfg.output_dir)
    check_output_dir(out, config)  # every check before anything is written
    if tc["resume"] and (done := finished_summary(out)):  # a multirun started again skips its finished points,
        # before joining a process group (a rank leaving while another still connects would crash it)
        print(f"{out}/summary.json is finished (top-1 {done['top1']:.2f}): skipping; delete it to run again")
        return done
    env_from_submitit()  # a task of Hydra's submitit launcher: its rank and world as torchrun's variables
    device, rank, world = init_distributed(cfg.device)
    held.enter_context(FailTogether())  # an error on one rank ends every rank within seconds, not at NCCL's timeout
    torch.backends.cudnn.benchmark = device.type == "cuda"
    main = rank == 0
    log = print if main else (lambda *a, **k: None)
    batches, dtype = resolve_batches(tc, world), eval_amp_dtype(tc, device)  # dtype: evaluation's (fp32 default)
    amp_dtype(tc, device)  # refuse an AMP setting this GPU lacks before anything runs
    if device.type == "cpu" and str(tc["amp"]) != "none":
        log(f"note: train.amp={tc['amp']} applies on CUDA only; this CPU run computes in fp32")
    held.enter_context(hold_output_dir(out, main))  # one writer per folder: a second run is refused here
    # SIGTERM/SIGUSR1/SIGUSR2 from here on: noted, then acted on at the next safe point (a step, the end of
    # pruning), every rank together, ending with the requeue exit; never the default handler's kill mid-write
    preemption = held.enter_context(Preemption())
    if main:
        link_submitit_logs(out)
    state = load_latest(out / "checkpoints", log)[0] if tc["resume"] else None
    if len(set(all_gather_object(state and state["epoch"]))) > 1:  # e.g. a multi-node run on node-local disks
        raise UserError(f"the ranks see different checkpoints in {out}: put output_dir on a filesystem all nodes share")
    check_resumable(state, config, batches.global_batch, out)

    seed_everything(cfg.seed)  # the same model init on every rank
    train_loader, val_loader, num_classes = build_loaders(
        config["data"], batches.per_process, tc["eval_batch_size"], world_size=world, rank=rank, seed=cfg.seed,
        num_workers=tc["num_workers"], pin_memory=bool(tc["pin_memory"]) and device.type == "cuda",
        train_split=tc["epochs"] > 0, per_image_seeds=True)  # evaluation only: val/ is enough
    model = build_model(config["model"]).to(device)
    if model.num_classes != num_classes:
        raise UserError(f"the model has {model.num_classes} classes, data={cfg.data.name} has {num_classes}: "
                        "pick the matching model and data")
    results = dict(state["results"]) if state else {}
    if state is None:
        if config["pretrain"]["epochs"] > 0:
            pre = pretrain_dense(model, config, device, config["paths"]["cache_dir"], log=log, preemption=preemption)
            results.update(dense_top1=pre["top1"], dense_top5=pre["top5"], pretrain_cache=pre["cache"])
        elif tc["validate_dense"]:
            ev = validate(model, val_loader, device, dtype, main, "eval dense")
            results.update(dense_top1=ev["top1"], dense_top5=ev["top5"])
        # On the CPU, as prune.py: a GPU's cumsum can flip near-ties, giving the same weights two checksums.
        masks, p = masks_for_training_run(model.cpu(), config, method, ratio, module_ratios, device,
                                          pattern["pattern"], pattern["allocation"] or "auto")
        results["pruning"] = p
        if p["weights_already_pruned"]:
            log(f"model.weights is already pruned ({100 * p['weights_zero_share']:.1f}% of its prunable weights are "
                f"zero): masks from {p['masks_from']}")
        apply_masks(model, masks)
        model.to(device)
        ev = validate(model, val_loader, device, dtype, main, "eval pruned")
        results.update(pruned_top1=ev["top1"], pruned_top5=ev["top5"], val_images=ev["n"])
        log(f"{p['method']} r={p['ratio']:.4f}: top-1 {ev['top1']:.2f}, top-5 {ev['top5']:.2f}")
        if signum := preemption.requested():  # asked while pruning: nothing is written yet, the rerun prunes again
            log("stopped after pruning, before anything was written: run the same command to start again")
            preemption.exit(signum)
    else:
        model.load_state_dict(state["model"])
        masks = state["masks"]  # on the CPU, as computed; FixedMask keeps its own copies on the device
    checksum = check_masks(masks, where="after pruning")
    log(f"masks identical on {world} rank(s): checksum {checksum}")

    # wandb.init on rank 0 only, inside the shared outcome: its failure (a network error, a bad entity) ends every
    # rank together with its sentence instead of leaving them in the first collective of finetuning
    loggers = []  # rank 0's; what on_main_shared hands the other ranks is only None or the shared error
    on_main_shared(lambda: loggers.append(WandbLogger(config["logger"], config, out,
                                                      run_id=(state or {}).get("wandb_id"))))
    logger = loggers[0] if loggers else WandbLogger(None, config, out, enabled=False)
    fit = {"history": [], "best_top1": None, "final": None}
    if tc["epochs"] > 0:
        fit = finetune(model, masks, train_loader, val_loader, num_classes, config, device, out, state=state,
                       logger=logger, results=results, log=log, preemption=preemption)
    final = fit["final"] or {"top1": results["pruned_top1"], "top5": results["pruned_top5"]}
    if pattern["semi_structured"]:  # the final model again, on 2:4 kernels (bf16): accuracy and images/s
        results["semi_structured"] = evaluate_semi_structured(model, masks, val_loader, device, main)

    summary = None
    if main:
        acc = account(model, masks, cfg.model.img_size, cfg.model.in_chans, pattern=pattern["nm"])
        pruning = results["pruning"]  # what was applied: method "none" when the masks are the weights' zeros
        summary = prune_summary(
            config["model"], pruning["method"], pruning["ratio"], acc, top1=final["top1"], top5=final["top5"], **results,
            pattern=pruning.get("pattern", "unstructured"),
            best_top1=fit["best_top1"], epochs=tc["epochs"], world_size=world, global_batch=batches.global_batch,
            seed=cfg.seed, mask_checksum=checksum, train_time_s=sum(r["time"] for r in fit["history"]),
            wall_time_s=time.time() - t_start, config=config)
        meta = {"model": cfg.model.name, "kwargs": config["model"]["kwargs"], "method": pruning["method"],
                "ratio": pruning["ratio"], "pattern": pruning.get("pattern", "unstructured"),
                "weights": str(cfg.model.weights), "finetuned_epochs": tc["epochs"], "top1": final["top1"],
                "git_commit": summary["git_commit"]}
        save_pruned(model, masks, out, meta)
        write_json(out / "summary.json", summary)  # last: its presence marks a finished run
        print(format_table(summary))
        print(results_table(summary))
        print(f"wrote {out}/summary.json, model.safetensors, masks.safetensors"
              + (", log.jsonl, checkpoints/" if tc["epochs"] > 0 else " (train.epochs=0: pruned and evaluated only)"))
    logger.finish(summary)
    return summary


# An absolute config path and `main` imported from the module `train` (below): Hydra's submitit launcher pickles
# `main`, which must then be a reference to an importable module, not a function of __main__.
@hydra.main(config_path=str(Path(__file__).resolve().parent / "conf"), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    finally:
        cleanup()


if __name__ == "__main__":
    check_config_groups(Path(__file__).parent / "conf", sys.argv[1:])  # `prune=foo`: one sentence, not Hydra's 14 lines
    # submitit's tasks unpickle `train.main` in fresh interpreters (local or on Slurm nodes): let them import it
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                                             os.environ.get("PYTHONPATH")]))
    import train

    train.main()
