"""One training epoch and one evaluation pass (DeiT's engine): mixed precision, gradient accumulation and
clipping, Mixup, EMA, a fixed pruning mask re-applied after every optimizer step, and all-reduced metrics."""
import contextlib
import math

import torch
from tqdm import tqdm

from dimap.training.progress import Progress, on_terminal

from dimap.training.distributed import all_reduce_sum, get_world_size
from dimap.errors import UserError
from dimap.training.image_folder import past_limit, stop_every_rank
from dimap.training.recipe import autocast, updates_per_epoch


class NonFiniteLoss(UserError):
    """The gradients became NaN or infinite (every rank raises it together)."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside torch.compile and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


class Late:
    """Device values read one update later without draining the GPU's queue: copied into pinned host memory behind
    the work that makes them, so reading waits for that work only (finished by then, as a rule), never for the
    steps queued since. On the CPU the values are at hand at once."""

    def __init__(self, values: torch.Tensor):
        values = values.detach()
        if values.device.type == "cuda":
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.host, self.ready = values.clone(), None

    def get(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host.tolist()


def _step(model, optimizer, scaler, clip_grad, fixed_mask, check_now: bool = True
          ) -> tuple[torch.Tensor | None, bool]:
    """One optimizer update from the accumulated gradients: (gradient norm, whether the update was applied).

    The norm decides, not the loss: it catches NaN gradients under a finite loss (bf16), and under DDP the
    gradients are already averaged over ranks, so every rank sees the same norm and decides the same way without
    a collective of its own. It is computed with clipping off too. fp16: GradScaler skips the update itself when
    it finds inf/NaN and then lowers its scale, which is how the skip is seen (the norm is then only clipping's).
    `check_now=False` (a non-finite norm stops the run): the update is applied whatever the norm, which the caller
    checks one update later (Late), before anything can read or save the weights; no host sync per update.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    if fixed_mask is not None:  # the clipping norm is the pruned network's, not the dense one's
        fixed_mask.mask_grads()
    norm = None
    if clip_grad:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip_grad))
    elif scaler is None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        return norm, scaler.get_scale() >= scale
    if check_now and not torch.isfinite(norm):  # a host sync: only where a non-finite update must be skipped
        return norm, False
    optimizer.step()
    return norm, True


def train_one_epoch(model, criterion, loader, optimizer, device, epoch: int, *, scheduler=None, mixup_fn=None,
                    amp_dtype=None, scaler=None, clip_grad=None, accum_steps: int = 1, fixed_mask=None,
                    ema=None, ema_mask=None, max_steps=None, nonfinite: str = "stop", max_skipped_steps: int = 25,
                    channels_last=False, progress: bool = True, start_step: int = 0, totals=None, skipped: int = 0,
                    in_a_row: int = 0, on_update=None, log_interval: int = 50) -> dict:
    """Train `model` for one epoch; returns train_loss (mean over ranks and applied steps), lr, skipped steps.

    `fixed_mask` (and `ema_mask` for the EMA copy) is a dimap.pruning.masks.FixedMask applied after every optimizer
    step, so pruned weights are exactly zero whenever anything reads them. The schedule is stepped per update
    here (timm's step_update, a no-op for per-epoch schedules); the caller steps it per epoch.

    Accumulation as timm's train.py: ceil(steps / accum_steps) updates, the last, short group divided by its own
    size. Non-finite gradients stop the run (`nonfinite="stop"`, fp32/bf16) or skip the update (`"skip"`, and
    always for fp16, where GradScaler skips are routine); `max_skipped_steps` skips in a row stop it either way.

    Resuming inside an epoch: `loader` yields the batches from `start_step` on (its sampler skips the others),
    `totals`, `skipped` and `in_a_row` carry the interrupted part's loss sums, skipped steps and skipped steps in a
    row. `on_update(step, totals, skipped, in_a_row, settle)` is called after every optimizer update (step = batches
    done this epoch; `settle()` raises NonFiniteLoss for an update whose norm is not checked yet: call it before
    saving the weights); if it returns True the epoch stops there and the result holds `stopped_at` = step
    (preemption: dimap.training.cluster).

    `progress` (rank 0): tqdm on a terminal, else a line every `log_interval` steps (dimap.training.progress).

    Unreadable images past data.max_bad_images on any rank (dimap.training.image_folder) stop every rank at the
    end of the epoch, through the all-reduce of the loss sums (finetune's `on_update` stops them sooner).
    """
    model.train()
    steps = start_step + len(loader) if max_steps is None else min(start_step + len(loader), int(max_steps))
    last_group = steps % accum_steps  # size of the short last group (0: none)
    last_group_start = steps - last_group if last_group else steps
    num_updates = epoch * updates_per_epoch(steps, accum_steps) + -(-start_step // accum_steps)
    # loss sum, batches (of applied updates)
    totals = torch.zeros(2, dtype=torch.float64, device=device) if totals is None else totals.to(device)
    group = torch.zeros(2, dtype=torch.float64, device=device)  # the same for the group being accumulated
    # A non-finite norm that stops the run is seen one update late (no host sync per update); `settle` checks the
    # last update's, and runs before anything reads or saves the weights: the next update, on_update (which may
    # write a checkpoint), the end of the epoch. Skipping ("skip", fp16) must decide before the update, at once.
    check_now, pending = scaler is not None or nonfinite == "skip", None

    def settle() -> None:
        nonlocal pending
        if pending is None:
            return
        (norm, loss_value), step = pending[0].get(), pending[1]
        pending = None
        if not math.isfinite(norm):
            raise NonFiniteLoss(f"the gradient norm became {norm} (loss {loss_value}) at epoch {epoch}, step {step}: "
                                "lower train.lr, set train.clip_grad or train.amp=bf16, or pass train.nonfinite=skip; "
                                "the last good checkpoint is kept, rerun to resume")

    optimizer.zero_grad(set_to_none=True)
    shown = Progress(steps, start_step, f"train {epoch}", progress, log_interval, get_world_size())
    stopped_at = None
    for i, (images, targets) in enumerate(loader, start=start_step):
        if i >= steps:
            break
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        step_now = (i + 1) % accum_steps == 0 or i + 1 == steps
        # DDP: no gradient all-reduce on the micro-batches that only accumulate
        sync = contextlib.nullcontext() if step_now or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, amp_dtype):
                loss = criterion(model(images), targets)
            scaled = loss / (last_group if i >= last_group_start else accum_steps)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        group += torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64, device=device)])
        if step_now:
            settle()  # the previous update's norm, long computed by now
            norm, applied = _step(model, optimizer, scaler, clip_grad, fixed_mask, check_now)
            if not check_now:
                pending = (Late(torch.stack([norm.float(), loss.detach().float()])), i)
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if applied:
                totals += group
                in_a_row = 0
                if fixed_mask is not None:
                    fixed_mask.apply()
                if ema is not None:
                    ema.update(unwrap(model), step=num_updates)
                    if ema_mask is not None:
                        ema_mask.apply()
            else:
                skipped, in_a_row = skipped + 1, in_a_row + 1
                if in_a_row >= max_skipped_steps:
                    raise NonFiniteLoss(f"{in_a_row} optimizer steps in a row had non-finite gradients (epoch "
                                        f"{epoch}, step {i}): the run has diverged; lower train.lr or use "
                                        "train.amp=bf16, then rerun to resume from the last good checkpoint")
            group.zero_()
            if scheduler is not None:
                scheduler.step_update(num_updates=num_updates)
        if shown.wants(i):
            shown.note(i, Late(loss.detach().float().reshape(1)), optimizer.param_groups[0]["lr"])
        shown.update(i, len(targets))
        if step_now and on_update is not None and on_update(i + 1, totals, skipped, in_a_row, settle):
            stopped_at = i + 1
            break
    settle()
    shown.close()
    if stopped_at is not None:  # the epoch goes on after the resumption: its sums stay this rank's own
        return {"stopped_at": stopped_at, "totals": totals, "skipped_steps": skipped, "in_a_row": in_a_row,
                "updates": num_updates}
    bad = past_limit(loader)
    totals = all_reduce_sum(torch.cat([totals, totals.new_tensor([bad is not None])]))  # + ranks past the limit
    if totals[2]:
        stop_every_rank(bad)
    loss_mean = (totals[0] / totals[1]).item() if totals[1] > 0 else math.nan
    return {"train_loss": loss_mean, "lr": optimizer.param_groups[0]["lr"], "skipped_steps": skipped,
            "updates": num_updates}


def evaluate(model, loader, device, *, amp_dtype=None, channels_last=False, progress: bool = True,
             desc: str = "eval") -> dict:
    """Top-1 / top-5 accuracy (%) and mean loss over the whole validation set.

    Correct counts are summed over ranks with all_reduce; with a sampler that shards without padding
    (dimap.training.samplers.ShardedEvalSampler) every validation image is counted exactly once: `n` says how many.
    Unreadable images past data.max_bad_images on any rank stop every rank here, through the same all-reduce.
    """
    with torch.no_grad():  # not a decorator: mutmut 3.8.1 skips decorated functions (results/quality/README.md)
        model = unwrap(model).eval()
        # top-1 hits, top-5 hits, loss sum, images; then the ranks past their limit of unreadable images
        stats = torch.zeros(5, dtype=torch.float64, device=device)
        count = 0  # images, counted on the host: a device tensor made per batch would wait for the GPU each time
        for images, targets in tqdm(loader, desc=desc, disable=not (progress and on_terminal()), dynamic_ncols=True,
                                    leave=False):
            count += len(targets)
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                logits = model(images)
            logits = logits.float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
            stats[:3] += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(),
                                      torch.nn.functional.cross_entropy(logits, targets, reduction="sum")]).double()
        bad = past_limit(loader)
        stats[3:] = stats.new_tensor([count, bad is not None])
        all_reduce_sum(stats)
        if stats[4]:
            stop_every_rank(bad)
        n = int(stats[3].item())
        if n == 0:
            return {"top1": math.nan, "top5": math.nan, "loss": math.nan, "n": 0}
        return {"top1": 100.0 * stats[0].item() / n, "top5": 100.0 * stats[1].item() / n,
                "loss": stats[2].item() / n, "n": n}
