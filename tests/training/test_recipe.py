"""The recipe against independent references: timm's own scheduler, optimizer and Mixup built by hand, the
linear-warm-up + cosine formula of the official Swin code, torch's cross-entropy. Fast: no training."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_swin
from omegaconf import OmegaConf
from timm.data import Mixup
from timm.scheduler import CosineLRScheduler, TanhLRScheduler

from dimap.errors import UserError
from dimap.training.recipe import (amp_dtype, autocast, build_mixup_and_loss, build_optimizer, build_scheduler,
                                   grad_scaler, resolve_batches, scaled_lrs, updates_per_epoch)

CPU = torch.device("cpu")
PAPER = OmegaConf.load(Path(__file__).parents[2] / "conf" / "train" / "paper.yaml")


def names_override(message: str, override: str) -> bool:
    """The message names `override` as something a user can paste (not glued to other text)."""
    return re.search(rf"(?<![\w.]){re.escape(override)}(?![\w.])", message) is not None


def refusal(cfg, world_size=1) -> str:
    with pytest.raises(UserError) as e:
        resolve_batches(cfg, world_size)
    return str(e.value)


# --- batch sizes ---------------------------------------------------------------------------------------------

def test_each_bad_batch_setting_is_refused_naming_its_own_key():
    for cfg, key in [({"batch_size": 0}, "train.batch_size"), ({"batch_size": 8.0}, "train.batch_size"),
                     ({"batch_size": 8, "global_batch": 0}, "train.global_batch"),
                     ({"batch_size": 8, "global_batch": 64.0}, "train.global_batch"),
                     ({"batch_size": 8, "accum_steps": 0}, "train.accum_steps"),
                     ({"batch_size": 8, "eval_batch_size": 0}, "train.eval_batch_size"),
                     ({"batch_size": 8, "eval_batch_size": 2.5}, "train.eval_batch_size")]:
        msg = refusal(cfg)
        assert key in msg, (cfg, msg)
        assert repr(cfg[key.split(".")[1]]) in msg, (cfg, msg)  # and the value given


def test_a_global_batch_the_processes_cannot_share_names_the_multiple_to_pick():
    msg = refusal({"batch_size": 8, "global_batch": 1020}, 8)  # 1020 / 8 processes
    assert "train.global_batch" in msg and "1020" in msg and re.search(r"multiple of 8\b", msg)
    msg = refusal({"batch_size": 8, "global_batch": 6, "accum_steps": 2}, 2)  # 2 processes x 2 steps = 4
    assert "train.global_batch" in msg and re.search(r"multiple of 4\b", msg)


def test_the_smallest_settings_are_accepted():
    assert vars(resolve_batches({"batch_size": 1, "global_batch": 1, "eval_batch_size": 1}, 1)) == \
        {"per_process": 1, "accum_steps": 1, "world_size": 1}


def test_accum_steps_null_without_global_batch_means_no_accumulation():
    assert resolve_batches({"batch_size": 8, "accum_steps": None}, 2).global_batch == 16
    assert resolve_batches({"batch_size": 8}, 2).accum_steps == 1


def test_global_batch_reached_one_image_at_a_time_when_that_is_all_a_process_takes():
    b = resolve_batches({"batch_size": 1, "global_batch": 8, "accum_steps": None}, 1)
    assert (b.per_process, b.accum_steps) == (1, 8)


def test_the_odd_batch_refusal_names_overrides_that_work():
    msg = refusal({"batch_size": 15, "cutmix": 1.0})
    assert "15" in msg and names_override(msg, "train.mixup=0") and names_override(msg, "train.cutmix=0")


def test_one_batch_epoch_makes_one_update():
    assert [updates_per_epoch(s, 1) for s in (1, 2, 3)] == [1, 2, 3]
    assert updates_per_epoch(1, 8) == 1 and updates_per_epoch(9, 8) == 2


# --- optimizer ----------------------------------------------------------------------------------------------

def test_optimizer_is_the_configured_adamw_without_decay_on_biases_norms_and_position_tables():
    model = make_tiny_swin()
    cfg = {"opt": "adamw", "weight_decay": 0.05, "opt_eps": 1e-6, "opt_betas": [0.8, 0.95]}
    opt = build_optimizer(model, cfg, 3e-4)
    assert type(opt) is torch.optim.AdamW
    decay = {}
    for group in opt.param_groups:
        assert group["lr"] == 3e-4 and group["eps"] == 1e-6 and tuple(group["betas"]) == (0.8, 0.95)
        decay.update({id(p): group["weight_decay"] for p in group["params"]})
    named = dict(model.named_parameters())
    assert {id(p) for p in named.values()} == set(decay), "every parameter is optimized, once"
    for name, p in named.items():
        exempt = name.endswith(".bias") or "norm" in name or "relative_position_bias_table" in name
        assert decay[id(p)] == (0.0 if exempt else 0.05), name


def test_optimizer_defaults_are_adamw_without_weight_decay():
    model = make_tiny_swin()
    opt = build_optimizer(model, {}, 3e-4)
    assert type(opt) is torch.optim.AdamW
    assert all(g["weight_decay"] == 0.0 and g["lr"] == 3e-4 for g in opt.param_groups)
    assert type(build_optimizer(model, {"opt": "sgd"}, 0.1)) is torch.optim.SGD


def test_an_unknown_optimizer_is_refused_naming_it():
    with pytest.raises(UserError) as e:
        build_optimizer(make_tiny_swin(), {"opt": "adamx"}, 1e-3)
    assert "train.opt='adamx'" in str(e.value)  # the key and the value given


# --- schedule -----------------------------------------------------------------------------------------------

def swin_lr(t, warmup, total, lr, min_lr, warmup_lr):
    """The official Swin code's schedule by formula: linear warm-up, then cosine to min_lr."""
    if t < warmup:
        return warmup_lr + (lr - warmup_lr) * t / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


def lrs_per_update(cfg, lrs, upe, n):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lrs["lr"])
    sched = build_scheduler(opt, cfg, lrs, upe)
    out = [opt.param_groups[0]["lr"]]
    for t in range(1, n + 1):
        sched.step_update(num_updates=t)
        out.append(opt.param_groups[0]["lr"])
    return sched, out


def test_paper_schedule_per_update_equals_the_swin_formula_and_timms_scheduler_built_by_hand():
    lrs, upe = scaled_lrs(PAPER, 1024), 4  # 30 epochs = 15 warm-up + 15 cosine, stepped every update
    _, got = lrs_per_update(PAPER, lrs, upe, 30 * upe)
    warm, total = PAPER.warmup_epochs * upe, PAPER.epochs * upe
    assert got == pytest.approx([swin_lr(t, warm, total, **lrs) for t in range(total + 1)], rel=1e-9, abs=1e-15)
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lrs["lr"])
    ref = CosineLRScheduler(ref_opt, t_initial=total - warm, lr_min=lrs["min_lr"], warmup_t=warm,
                            warmup_lr_init=lrs["warmup_lr"], warmup_prefix=True, t_in_epochs=False)
    want = [ref_opt.param_groups[0]["lr"]]
    for t in range(1, total + 1):
        ref.step_update(num_updates=t)
        want.append(ref_opt.param_groups[0]["lr"])
    assert got == want


def test_schedule_defaults_are_cosine_per_update_without_warmup():
    lrs = {"lr": 1e-3, "min_lr": 1e-5, "warmup_lr": 1e-6}
    _, got = lrs_per_update({"epochs": 2}, lrs, 3, 6)
    assert got == pytest.approx([swin_lr(t, 0, 6, **lrs) for t in range(7)], rel=1e-9)


def test_sched_on_updates_false_steps_once_per_epoch():
    lrs = {"lr": 1e-3, "min_lr": 1e-5, "warmup_lr": 1e-6}
    cfg = {"epochs": 4, "warmup_epochs": 2, "sched_on_updates": False}
    sched, per_update = lrs_per_update(cfg, lrs, 5, 5)
    assert per_update == [pytest.approx(1e-6)] * 6  # unchanged inside epoch 0
    sched.step(1)
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(swin_lr(1, 2, 4, **lrs))


def test_train_sched_picks_timms_scheduler_of_that_name():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lrs = {"lr": 0.1, "min_lr": 0.0, "warmup_lr": 0.0}
    assert type(build_scheduler(opt, {"epochs": 3, "sched": "tanh"}, lrs, 2)) is TanhLRScheduler
    for sched in ("cosinee", "plateau", "none"):  # unknown; per epoch only; timm's "no scheduler"
        with pytest.raises(UserError) as e:
            build_scheduler(opt, {"epochs": 3, "sched": sched}, lrs, 2)
        assert f"train.sched={sched!r}" in str(e.value) and names_override(str(e.value), "train.sched=cosine")
    with pytest.raises(UserError) as e:
        build_scheduler(opt, {"epochs": 3, "sched": "none"}, lrs, 2)
    assert names_override(str(e.value), "train.sched=constant")  # what "none" was probably meant to be
    build_scheduler(opt, {"epochs": 3, "sched": "constant"}, lrs, 2)


# --- Mixup/CutMix and the loss ------------------------------------------------------------------------------

def mixed(fn, seed):
    np.random.seed(seed)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    return fn(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))


@pytest.mark.parametrize("cfg, by_hand", [
    (PAPER, dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1)),
    ({"mixup": 0.4, "cutmix": 0.7, "mixup_prob": 0.6, "mixup_switch_prob": 0.3, "smoothing": 0.2},
     dict(mixup_alpha=0.4, cutmix_alpha=0.7, prob=0.6, switch_prob=0.3, label_smoothing=0.2)),
    ({"mixup": 0.5, "cutmix": 0.5}, dict(mixup_alpha=0.5, cutmix_alpha=0.5, label_smoothing=0.0)),  # defaults
    ({"mixup": 0.3, "cutmix": 0.0}, dict(mixup_alpha=0.3, cutmix_alpha=0.0, label_smoothing=0.0)),  # Mixup only
    ({"mixup": 0, "cutmix": 0.5}, dict(mixup_alpha=0.0, cutmix_alpha=0.5, label_smoothing=0.0)),  # CutMix only
])
def test_mixup_is_timms_built_by_hand_with_the_configured_values(cfg, by_hand):
    fn, loss = build_mixup_and_loss(cfg, num_classes=10)
    ref = Mixup(**by_hand, num_classes=10)
    for seed in range(30):  # enough draws that mixing, cutting and not mixing all happen
        (x, t), (rx, rt) = mixed(fn, seed), mixed(ref, seed)
        assert torch.equal(x, rx) and torch.equal(t, rt), seed
    logits = torch.randn(8, 10)
    assert torch.allclose(loss(logits, rt), -(rt * logits.log_softmax(-1)).sum(-1).mean())


@pytest.mark.parametrize("cfg, smoothing", [({}, 0.0), ({"smoothing": 0.0, "mixup": 0.0, "cutmix": None}, 0.0),
                                            ({"smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0}, 0.1)])
def test_without_mixup_the_loss_is_torchs_cross_entropy_with_the_configured_smoothing(cfg, smoothing):
    fn, loss = build_mixup_and_loss(cfg, num_classes=10)
    assert fn is None
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 10, generator=g), torch.randint(0, 10, (6,), generator=g)
    want = torch.nn.functional.cross_entropy(logits, y, label_smoothing=smoothing)
    assert loss(logits, y).item() == pytest.approx(want.item(), rel=1e-6)


# --- precision ----------------------------------------------------------------------------------------------

def test_amp_defaults_to_fp32_and_an_unknown_value_is_refused_naming_it():
    assert amp_dtype({}, CPU) is None and amp_dtype({"amp": "NONE"}, CPU) is None
    with pytest.raises(UserError) as e:
        amp_dtype({"amp": "fp8"}, CPU)
    assert "train.amp='fp8'" in str(e.value)


def test_bf16_on_an_old_gpu_names_the_fp16_override(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    with pytest.raises(UserError) as e:
        amp_dtype({"amp": "bf16"}, torch.device("cuda", 0))
    assert names_override(str(e.value), "train.amp=fp16")


def test_only_fp16_gets_a_grad_scaler_on_the_training_device():
    for dtype in (None, torch.bfloat16):
        assert grad_scaler(CPU, dtype) is None
    scaler = grad_scaler(CPU, torch.float16)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler._device == "cpu"


def test_autocast_runs_in_the_dtype_asked_for():
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    for dtype in (torch.float16, torch.bfloat16):  # CPU autocast defaults to bf16: fp16 must be passed on
        with autocast(CPU, dtype):
            assert layer(x).dtype == dtype
    with autocast(CPU, None):
        assert layer(x).dtype == torch.float32


@pytest.mark.parametrize("opt", [None, 3])
def test_an_optimizer_that_is_not_a_name_is_refused_in_one_sentence(opt):
    """train.opt=null reached timm's None.lower() and ended in an AttributeError traceback."""
    with pytest.raises(UserError, match=rf"^train\.opt={opt!r} is not an optimizer name: .* e\.g\. train\.opt=adamw$"):
        build_optimizer(make_tiny_swin(), {"opt": opt, "weight_decay": 0.05}, 1e-3)
