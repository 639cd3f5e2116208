"""Finetuning a pruned model with its mask held fixed: the epoch loop, per-epoch mask checks, checkpoints
(output_dir/checkpoints) and the per-epoch log (output_dir/log.jsonl). Resumes from a checkpoint dict."""
import json
import math
import time
from pathlib import Path

import torch

from dimap.training.checkpoint import (restore_rng_state, rng_state, save_checkpoint, seed_everything,
                                       set_rng_state)
from dimap.training.distributed import (all_gather_object, all_reduce_sum, get_rank, get_world_size, is_main,
                                       on_main_shared, wrap_ddp)
from dimap.training.cluster import Preemption
from dimap.training.engine import evaluate, train_one_epoch
from dimap.training.image_folder import past_limit, stop_every_rank
from dimap.errors import UserError
from dimap.pruning.masks import FixedMask, mask_checksum
from dimap.training.recipe import (amp_dtype, build_mixup_and_loss, build_optimizer, build_scheduler, eval_amp_dtype,
                                   grad_scaler, resolve_batches, scaled_lrs, updates_per_epoch)

BAD_DATA = Preemption.BAD_DATA  # a stop agreed because a rank is past data.max_bad_images


def check_masks(masks: dict, fixed: FixedMask | None = None, where: str = "") -> str:
    """The masks' checksum, verified equal on every rank; with `fixed`, no pruned weight may be non-zero."""
    sums = all_gather_object(mask_checksum(masks))
    if len(set(sums)) > 1:
        raise UserError(f"the pruning masks differ across ranks {where} (checksums {sums}): give every rank "
                        "the same dense weights (model.weights) and the same prune settings")
    if fixed is not None:
        bad = all_reduce_sum(torch.tensor([float(fixed.violations())], dtype=torch.float64)).item()
        if bad:
            raise RuntimeError(f"{int(bad)} pruned weights are non-zero {where}: the fixed mask was not applied")
    return sums[0]


class StartedLoader:
    """A DataLoader whose iterator was made already (resuming mid-epoch: see finetune)."""

    def __init__(self, loader):
        self.loader, self.iterator, self.dataset = loader, iter(loader), loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return self.iterator


def write_log(path: Path, history: list[dict]) -> None:
    """log.jsonl, one line per finished epoch; rewritten whole from the checkpointed history (resume-safe)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    tmp.replace(path)


def finetune(model, masks: dict, train_loader, val_loader, num_classes: int, config: dict, device, out_dir,
             *, state: dict | None = None, logger=None, results: dict | None = None, log=print,
             preemption=None) -> dict:
    """Train `model` (already pruned with `masks`) for train.epochs; returns {'history', 'best_top1', 'final'}.

    `state` is a checkpoint to resume from; `results` (pre-finetuning figures) is stored in every checkpoint. Its
    large entries (optimizer, EMA, scaler, RNG states) are removed from it once restored, so no rank keeps the
    loaded checkpoint (about 1 GB for Swin-B with AdamW and EMA) referenced for the whole run.
    The evaluated model (the EMA copy when train.ema) is the one whose weights end in `model` on return.
    `preemption` (dimap.training.cluster.Preemption): on a stop request, a checkpoint after the current step, then
    exit; train.checkpoint_every_steps writes such mid-epoch checkpoints without stopping. Its all-reduce also
    stops every rank together, one update late, once one is past data.max_bad_images (without `preemption`, at the
    end of the epoch: dimap.training.engine).
    """
    tc, rank, world, main = config["train"], get_rank(), get_world_size(), is_main()
    batches = resolve_batches(tc, world)
    max_steps = tc.get("max_steps_per_epoch")
    steps = len(train_loader) if max_steps is None else min(len(train_loader), int(max_steps))
    lrs = scaled_lrs(tc, batches.global_batch)
    if tc.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, tc, lrs["lr"])
    scheduler = build_scheduler(optimizer, tc, lrs, updates_per_epoch(steps, batches.accum_steps))
    mixup_fn, criterion = build_mixup_and_loss(tc, num_classes)
    dtype, eval_dtype = amp_dtype(tc, device), eval_amp_dtype(tc, device)
    scaler = grad_scaler(device, dtype)
    fixed = FixedMask(model, masks)
    ema = ema_mask = None
    if tc.get("ema"):
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=float(tc.get("ema_decay", 0.9998)))
        ema_mask = FixedMask(ema.module, masks, like=fixed)  # one copy of the multipliers on this GPU

    start, best, history = 0, -math.inf, []
    start_step, partial, rng_at_stop = 0, {"totals": None, "skipped": 0}, None
    if state is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.module.load_state_dict(state["ema"])
        start, best, history = state["epoch"] + 1, state["best_top1"], list(state["history"])
        if not restore_rng_state(state["rng"], rank, world, config["seed"], start):
            log(f"resuming on {world} process(es) where {len(state['rng'])} saved the checkpoint: random streams "
                "reseeded per rank (same global batch, so the same schedule)")
        if state.get("step") and state["world_size"] != world:  # sampler positions mean other images now
            log(f"warning: the mid-epoch checkpoint was written by {state['world_size']} processes, not {world}: "
                f"epoch {start} starts over")
        elif state.get("step"):
            start_step, partial, rng_at_stop = state["step"], state["partial"][rank], state["rng"][rank]
            log(f"resuming epoch {start} at step {start_step}")
        for key in ("model", "optimizer", "scheduler", "scaler", "ema", "rng"):
            state.pop(key, None)
        log(f"resuming after epoch {state['epoch']} (best top-1 so far {best:.2f})")
    else:
        seed_everything(config["seed"], rank)  # the finetuning run does not depend on what came before it
    fixed.apply()
    ddp = wrap_ddp(model, device)
    if tc.get("compile"):
        ddp = torch.compile(ddp)
    eval_model = ema.module if ema is not None else model
    log(f"finetuning {tc['epochs']} epochs on {world} process(es): global batch {batches.global_batch} "
        f"({batches.per_process} x {batches.accum_steps} accum x {world}), lr {lrs['lr']:.3e}")

    def checkpoint(epoch_done: int, is_best: bool = False, then=None, **mid_epoch) -> None:
        """last.pt after `epoch_done`, then `then()` (rank 0); all ranks call it and fail together if rank 0's
        writing does. `mid_epoch`: step (batches done in the next epoch) and partial (each rank's loss sums and
        skipped steps so far in it)."""
        rngs = all_gather_object(rng_state())
        on_main_shared(lambda: write_checkpoint(rngs, epoch_done, is_best, mid_epoch, then))

    def write_checkpoint(rngs, epoch_done, is_best, mid_epoch, then) -> None:
        try:
            save_checkpoint({
                "model": model.state_dict(), "masks": masks, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "ema": ema.module.state_dict() if ema is not None else None, "epoch": epoch_done,
                "best_top1": best, "history": history, "rng": rngs, "config": config, "results": results or {},
                "mask_checksum": mask_checksum(masks), "world_size": world, "global_batch": batches.global_batch,
                "wandb_id": logger.run_id if logger is not None else None, **mid_epoch,
            }, Path(out_dir) / "checkpoints", is_best=is_best)
            if then is not None:
                then()
        except OSError as e:  # a full disk or quota: every rank stops in one sentence, the last checkpoint kept
            raise UserError(f"writing to {out_dir} failed ({e.strerror or e}): free space there (or fix its "
                            "permissions) and run the same command to resume from the last checkpoint") from None

    def write_epoch_log(row: dict) -> None:
        write_log(Path(out_dir) / "log.jsonl", history)
        if logger is not None:
            logger.log({k: v for k, v in row.items() if k != "epoch"} | {"epoch": row["epoch"]}, step=row["epoch"])

    every = int(tc.get("checkpoint_every_steps") or 0)

    def on_update(step: int, totals, skipped: int, in_a_row: int, settle) -> bool:
        """After each optimizer step: a mid-epoch checkpoint when asked to stop or every `every` updates. Past
        data.max_bad_images on any rank, every rank stops here together (one update late) without a checkpoint of
        the updates since: the one to resume from is the last written before."""
        bad = past_limit(train_loader) is not None
        stop = preemption.poll(bad) if preemption is not None else 0  # agreed by all ranks, one update late
        due = stop or (every and -(-step // batches.accum_steps) % every == 0 and step < steps)
        if due and stop != BAD_DATA and preemption is not None:  # agreed on this update at once, not one late:
            stop = preemption.requested(bad)  # no step past the limit goes into a checkpoint (a signal is kept)
        if due and stop != BAD_DATA:
            settle()  # no update with a non-finite norm goes into a checkpoint
            partial = all_gather_object({"totals": totals.detach().cpu(), "skipped": skipped, "in_a_row": in_a_row})
            checkpoint(epoch - 1, step=step, partial=partial)
        return bool(stop)

    for epoch in range(start, int(tc["epochs"])):
        t0 = time.time()
        train_loader.sampler.set_epoch(epoch)
        loader = train_loader
        if epoch == start and start_step:
            train_loader.sampler.set_start(start_step * batches.per_process)
            loader = StartedLoader(train_loader)  # its iterator may draw from the RNG, as at the epoch's start...
            set_rng_state(rng_at_stop)  # ...then the RNG as it was after the interrupted step
        stats = train_one_epoch(ddp, criterion, loader, optimizer, device, epoch, scheduler=scheduler,
                                mixup_fn=mixup_fn, amp_dtype=dtype, scaler=scaler, clip_grad=tc.get("clip_grad"),
                                accum_steps=batches.accum_steps, fixed_mask=fixed, ema=ema, ema_mask=ema_mask,
                                max_steps=max_steps, nonfinite=tc.get("nonfinite", "stop"),
                                max_skipped_steps=int(tc.get("max_skipped_steps", 25)),
                                channels_last=bool(tc.get("channels_last")), progress=main,
                                log_interval=int(tc.get("log_interval", 50)),
                                start_step=start_step if epoch == start else 0, on_update=on_update,
                                **(partial if epoch == start else {}))
        if "stopped_at" in stats:
            bad = past_limit(train_loader)
            if (signum := preemption.requested(bad is not None)) == BAD_DATA:
                stop_every_rank(bad)  # every rank, this rank's progress bar closed: one sentence, exit 2
            log(f"stopped in epoch {epoch} after step {stats['stopped_at']}: checkpoint written; run the same "
                "command to resume")
            preemption.exit(signum)
        scheduler.step(epoch + 1)
        check_masks(masks, fixed, where=f"after epoch {epoch}")
        ev = evaluate(eval_model, val_loader, device, amp_dtype=eval_dtype, channels_last=bool(tc.get("channels_last")),
                      progress=main, desc=f"eval {epoch}")
        row = {"epoch": epoch, "train_loss": stats["train_loss"], "lr": stats["lr"], "top1": ev["top1"],
               "top5": ev["top5"], "val_loss": ev["loss"], "skipped_steps": stats["skipped_steps"],
               "time": time.time() - t0}
        history.append(row)
        is_best = ev["top1"] > best
        best = max(best, ev["top1"])
        log(f"epoch {epoch}: loss {row['train_loss']:.4f}  lr {row['lr']:.2e}  top-1 {row['top1']:.2f}  "
            f"top-5 {row['top5']:.2f}  ({row['time']:.0f} s)")
        checkpoint(epoch, is_best, then=lambda: write_epoch_log(row))
        if preemption is not None and epoch + 1 < int(tc["epochs"]) and (signum := preemption.requested()):
            preemption.exit(signum)  # asked during evaluation: the epoch's checkpoint is the one to resume from
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return {"history": history, "best_top1": best, "final": history[-1] if history else None}
