"""The training recipe from a `train` config, built with timm's factories: batch sizes, scaled learning rates,
optimizer, scheduler, Mixup/CutMix, loss, mixed precision and EMA. No Hydra: `cfg` is any mapping."""
import contextlib
import math
from dataclasses import dataclass

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from dimap.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@dataclass
class Batches:
    per_process: int
    accum_steps: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.per_process * self.accum_steps * self.world_size


def resolve_batches(cfg, world_size: int) -> Batches:
    """Per-process batch and accumulation steps from train.batch_size / accum_steps / global_batch.

    Without global_batch: batch_size per process, accum_steps (default 1). With global_batch and accum_steps
    null (the paper recipe): batch_size is the most one process takes at once, and accum_steps is the fewest
    that reach global_batch on this many processes (1024 = 128 x 8 GPUs, or 128 x 8 steps on one GPU). With
    both set: batch_size = global_batch / (world_size x accum_steps).
    """
    accum, gb, per = cfg.get("accum_steps", 1), cfg.get("global_batch"), cfg.get("batch_size")
    if not isinstance(per, int) or per < 1:
        raise UserError(f"train.batch_size={per!r} must be a whole number >= 1: pass e.g. train.batch_size=128")
    if gb is not None and (not isinstance(gb, int) or gb < 1 or gb % world_size):
        raise UserError(f"train.global_batch={gb!r} is not divisible by the {world_size} processes: pick a multiple "
                        f"of {world_size} or unset it")
    if accum is None and gb is not None:
        accum = next(a for a in range(1, gb // world_size + 1) if (gb // world_size) % a == 0
                     and gb // world_size // a <= per)
    elif accum is None:
        accum = 1
    if not isinstance(accum, int) or accum < 1:
        raise UserError(f"train.accum_steps={accum!r} must be a whole number >= 1: pass e.g. train.accum_steps=1")
    if gb is not None:
        if gb % (world_size * accum):
            raise UserError(f"train.global_batch={gb!r} is not divisible by world_size x accum_steps = "
                            f"{world_size} x {accum}: pick a multiple of {world_size * accum} or unset it")
        per = gb // (world_size * accum)
    if per % 2 and (float(cfg.get("mixup") or 0) > 0 or float(cfg.get("cutmix") or 0) > 0):
        raise UserError(f"the batch per process is {per}, odd, and Mixup/CutMix pair images within a batch: pick an "
                        "even train.batch_size (or train.global_batch), or set train.mixup=0 train.cutmix=0")
    eval_bs = cfg.get("eval_batch_size", per)
    if not isinstance(eval_bs, int) or eval_bs < 1:
        raise UserError(f"train.eval_batch_size={eval_bs!r} must be a whole number >= 1: pass e.g. 256")
    return Batches(per, accum, world_size)


def updates_per_epoch(steps: int, accum_steps: int) -> int:
    """Optimizer updates in an epoch of `steps` batches: a short last group still makes one (timm's train.py)."""
    return max(1, math.ceil(steps / accum_steps))


def scaled_lrs(cfg, global_batch: int) -> dict[str, float]:
    """lr, min_lr and warmup_lr scaled linearly by global batch / lr_base_batch (as the official Swin code)."""
    scale = global_batch / float(cfg.get("lr_base_batch") or global_batch)
    return {k: float(cfg[k]) * scale for k in ("lr", "min_lr", "warmup_lr")}


def build_optimizer(model: torch.nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
    """timm optimizer; no weight decay on biases, norms and Swin's position tables (timm's default filter)."""
    kwargs = {"eps": cfg.get("opt_eps")} if cfg.get("opt_eps") is not None else {}
    if cfg.get("opt_betas") is not None:
        kwargs["betas"] = tuple(cfg["opt_betas"])
    if not isinstance(cfg.get("opt", "adamw"), str):  # train.opt=null: timm would fail on None.lower()
        raise UserError(f"train.opt={cfg.get('opt')!r} is not an optimizer name: use a timm optimizer name, e.g. "
                        "train.opt=adamw")
    try:
        return create_optimizer_v2(model, opt=cfg.get("opt", "adamw"), lr=lr,
                                   weight_decay=float(cfg.get("weight_decay", 0.0)), **kwargs)
    except (AssertionError, ValueError, TypeError) as e:
        raise UserError(f"train.opt={cfg.get('opt')!r} cannot be built ({e}): use a timm optimizer name, e.g. adamw")


def build_scheduler(optimizer, cfg, lrs: dict, updates_per_epoch: int):
    """Linear warm-up from warmup_lr over warmup_epochs, then the schedule (cosine) down to min_lr.

    Warm-up is part of train.epochs (30 = 15 warm-up + 15 cosine in the paper), as in the official Swin code; a
    run shorter than its warm-up (a smoke test) is all warm-up. Stepped every update when train.sched_on_updates.
    """
    epochs = int(cfg["epochs"])
    warmup = min(int(cfg.get("warmup_epochs", 0)), epochs)
    try:
        sched, _ = create_scheduler_v2(
            optimizer, sched=cfg.get("sched", "cosine"), num_epochs=max(1, epochs - warmup),
            warmup_epochs=warmup, warmup_lr=lrs["warmup_lr"], min_lr=lrs["min_lr"],
            warmup_prefix=True, step_on_epochs=not cfg.get("sched_on_updates", True),
            updates_per_epoch=updates_per_epoch)
    except (AssertionError, ValueError, TypeError) as e:
        raise UserError(f"train.sched={cfg.get('sched')!r} cannot be built ({e}): use e.g. train.sched=cosine")
    if sched is None:  # timm's "none": no scheduler at all, which the engine steps every update and epoch
        raise UserError(f"train.sched={cfg.get('sched')!r} gives no schedule: use e.g. train.sched=cosine, or "
                        "train.sched=constant for a fixed learning rate")
    return sched


def build_mixup_and_loss(cfg, num_classes: int):
    """(mixup_fn or None, training loss). Mixup/CutMix take soft targets, with label smoothing inside."""
    smoothing = float(cfg.get("smoothing") or 0.0)
    mixup, cutmix = float(cfg.get("mixup") or 0.0), float(cfg.get("cutmix") or 0.0)
    if mixup > 0 or cutmix > 0:
        fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=float(cfg.get("mixup_prob", 1.0)),
                   switch_prob=float(cfg.get("mixup_switch_prob", 0.5)), mode="batch",
                   label_smoothing=smoothing, num_classes=num_classes)
        return fn, SoftTargetCrossEntropy()
    if smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=smoothing)
    return None, torch.nn.CrossEntropyLoss()


def amp_dtype(cfg, device: torch.device):
    """The autocast dtype, or None for fp32. CUDA only: on CPU the run is fp32 (CPU autocast is slower)."""
    amp = str(cfg.get("amp", "none")).lower()
    if amp not in AMP_DTYPES:
        raise UserError(f"train.amp={amp!r} is unknown: pass train.amp=bf16, fp16 or none")
    if device.type != "cuda":
        return None
    # Pre-Ampere GPUs (V100, T4) report bf16 as supported because they emulate it, slowly: ask for native support.
    if amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError("train.amp=bf16 but this GPU has no native bfloat16 (pre-Ampere): pass train.amp=fp16")
    return AMP_DTYPES[amp]


def eval_amp_dtype(cfg, device: torch.device):
    """Evaluation's autocast dtype: fp32 (None) unless train.eval_amp, since bf16 logits move top-1 by a few
    hundredths against the fp32 numbers timm and the papers report."""
    return amp_dtype(cfg, device) if cfg.get("eval_amp") else None


def autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def grad_scaler(device: torch.device, dtype):
    """A GradScaler for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
