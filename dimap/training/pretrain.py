"""Dense pretraining for models without pretrained weights (the demo's nano Swin on MNIST), cached on disk.

The cache file is keyed by a hash of everything that shapes the dense weights (model, data, the pretraining
recipe, seed, world size), so a second run with the same settings loads it instead of training again.
"""
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from dimap.training.checkpoint import seed_everything
from dimap.training.data import build_loaders
from dimap.training.distributed import (all_gather_object, get_rank, get_world_size, is_main, on_main_shared,
                                       wrap_ddp)
from dimap.errors import UserError
from dimap.training.engine import evaluate, train_one_epoch
from dimap.training.image_folder import past_limit, stop_every_rank
from dimap.training.recipe import (amp_dtype, build_mixup_and_loss, build_optimizer, build_scheduler, eval_amp_dtype,
                                   grad_scaler, resolve_batches, scaled_lrs, updates_per_epoch)

# Pretraining takes the finetuning recipe (train.*), then these, then the pretrain block: no Mixup, CutMix or EMA.
PLAIN = {"mixup": 0.0, "cutmix": 0.0, "smoothing": 0.0, "ema": False}
NOT_SHAPING = ("resume", "num_workers", "pin_memory", "eval_batch_size", "validate_dense", "nonfinite", "compile",
               "log_interval")


def pretrain_recipe(config: dict) -> dict:
    return {**config["train"], **PLAIN, **config["pretrain"]}


def pretrain_key(config: dict, world_size: int) -> str:
    recipe = {k: v for k, v in pretrain_recipe(config).items() if k not in NOT_SHAPING}
    data = {k: v for k, v in config["data"].items() if k not in ("root", "num_workers")}
    blob = json.dumps({"model": config["model"], "data": data, "recipe": recipe, "seed": config["seed"],
                       "world_size": world_size}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrain_dense(model, config: dict, device, cache_dir, log=print, preemption=None) -> dict:
    """Fill `model` with dense weights trained per config['pretrain'], from the cache when present.

    `preemption` (dimap.training.cluster.Preemption): a stop request ends pretraining after the current step,
    every rank together, with the requeue exit; nothing is cached, so the resumed run pretrains from the start.

    Builds its own loaders (pretrain.batch_size may differ from train.batch_size). Returns {'cache': path,
    'cached': bool, 'top1', 'top5'}: the accuracy of the dense model after pretraining.
    """
    world = get_world_size()
    key = pretrain_key(config, world)
    path = Path(cache_dir) / "pretrain" / f"{config['model'].get('short', 'model')}_{key}.pt"
    state = None
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
        except Exception as e:  # a torn cache file is only a cache miss
            state = None
            log(f"warning: the pretraining cache {path} is unreadable ({type(e).__name__}); training again")
    # A rank that loads while another trains would meet it in other collectives (a hang): all must agree.
    if len(set(all_gather_object(state is not None))) > 1:
        raise UserError(f"the pretraining cache {path} is found on some ranks only: put paths.cache_dir on a "
                        "filesystem all nodes share")
    if state is not None:
        log(f"dense weights from the pretraining cache {path} (top-1 {state['top1']:.2f})")
        return {"cache": str(path), "cached": True, "top1": state["top1"], "top5": state["top5"]}

    rc = pretrain_recipe(config)
    epochs = int(rc["epochs"])
    batches = resolve_batches(rc, world)
    train_loader, val_loader, num_classes = build_loaders(
        config["data"], batches.per_process, rc["eval_batch_size"], world_size=world, rank=get_rank(),
        seed=config["seed"], num_workers=rc["num_workers"], pin_memory=bool(rc["pin_memory"]) and device.type == "cuda")
    steps = len(train_loader) if rc.get("max_steps_per_epoch") is None else min(len(train_loader),
                                                                                 int(rc["max_steps_per_epoch"]))
    lrs = scaled_lrs(rc, batches.global_batch)
    optimizer = build_optimizer(model, rc, lrs["lr"])
    scheduler = build_scheduler(optimizer, rc, lrs, updates_per_epoch(steps, batches.accum_steps))
    _, criterion = build_mixup_and_loss(rc, num_classes)
    dtype = amp_dtype(rc, device)
    scaler = grad_scaler(device, dtype)
    seed_everything(config["seed"], get_rank())
    ddp = wrap_ddp(model, device)
    log(f"pretraining the dense model: {epochs} epochs, global batch {batches.global_batch}, lr {lrs['lr']:.2e}")
    t0 = time.time()

    def stop_requested(*_) -> bool:  # after each update, agreed by every rank one update late (finetune's way)
        return preemption is not None and bool(preemption.poll(past_limit(train_loader) is not None))

    for epoch in range(epochs):
        train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(ddp, criterion, train_loader, optimizer, device, epoch, scheduler=scheduler,
                                amp_dtype=dtype, scaler=scaler, clip_grad=rc.get("clip_grad"),
                                accum_steps=batches.accum_steps, max_steps=rc.get("max_steps_per_epoch"),
                                nonfinite=rc.get("nonfinite", "stop"),
                                max_skipped_steps=int(rc.get("max_skipped_steps", 25)), progress=is_main(),
                                log_interval=int(rc.get("log_interval", 50)), on_update=stop_requested)
        if "stopped_at" in stats:
            if (signum := preemption.requested(past_limit(train_loader) is not None)) == preemption.BAD_DATA:
                stop_every_rank(past_limit(train_loader))
            log(f"stopped in pretraining epoch {epoch} after step {stats['stopped_at']}: run the same command to "
                "start again (dense pretraining is cached only once finished)")
            preemption.exit(signum)
        scheduler.step(epoch + 1)
        log(f"pretrain epoch {epoch}: loss {stats['train_loss']:.4f}, lr {stats['lr']:.2e}, "
            f"{time.time() - t0:.0f} s")
    ev = evaluate(model, val_loader, device, amp_dtype=eval_amp_dtype(rc, device), progress=is_main(),
                  desc="eval dense")
    log(f"pretrained dense model: top-1 {ev['top1']:.2f}, top-5 {ev['top5']:.2f}")

    def write_cache() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "top1": ev["top1"], "top5": ev["top5"], "key": key}, tmp)
        os.replace(tmp, path)

    on_main_shared(write_cache)  # rank 0 writes, every rank waits for it (and fails with it)
    return {"cache": str(path), "cached": False, "top1": ev["top1"], "top5": ev["top5"]}
