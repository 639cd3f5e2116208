"""The training engine, recipe and checkpoint pieces on a tiny Swin and synthetic batches (no Hydra)."""
import copy

import pytest
import torch
from conftest import make_tiny_swin
from torch.utils.data import DataLoader, TensorDataset

from dimap.training.checkpoint import (load_latest, restore_rng_state, rng_state, save_checkpoint, seed_everything,
                                      set_rng_state)
from dimap.training.engine import NonFiniteLoss, evaluate, train_one_epoch
from dimap.errors import UserError
from dimap.pruning.masks import FixedMask, apply_masks, compute_masks
from dimap.training.recipe import (amp_dtype, build_optimizer, build_scheduler, eval_amp_dtype, resolve_batches,
                                  scaled_lrs, updates_per_epoch)

CPU = torch.device("cpu")
RECIPE = dict(opt="adamw", lr=1e-3, weight_decay=0.5, epochs=2, warmup_epochs=1, warmup_lr=1e-6, min_lr=1e-5,
              sched="cosine", sched_on_updates=True)


def batches(n=16, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch, shuffle=False)


def test_fixed_mask_keeps_pruned_weights_exactly_zero_under_adamw_weight_decay():
    model = make_tiny_swin()
    masks = compute_masks(model, "dimap", 0.55)
    apply_masks(model, masks)
    opt = build_optimizer(model, RECIPE, RECIPE["lr"])
    before = copy.deepcopy(model.state_dict())
    fixed = FixedMask(model, masks)
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), batches(), opt, CPU, 0, fixed_mask=fixed, progress=False)
    assert fixed.violations() == 0
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name
        assert not torch.equal(params[name][mask], before[name][mask]), f"{name} did not train"


def test_accumulating_two_half_batches_equals_one_full_batch():
    torch.manual_seed(0)
    a, b = make_tiny_swin(drop_path_rate=0.0), make_tiny_swin(drop_path_rate=0.0)  # timm default is 0.1
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (a, b))
    loss = torch.nn.CrossEntropyLoss()
    train_one_epoch(a, loss, batches(8, 8), opt_a, CPU, 0, progress=False)
    train_one_epoch(b, loss, batches(8, 4), opt_b, CPU, 0, accum_steps=2, progress=False)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)


class NaNLoss(torch.nn.Module):
    def forward(self, logits, target):
        return torch.nn.functional.cross_entropy(logits, target) * float("nan")


def test_nonfinite_loss_stops_with_a_sentence_or_skips_the_step():
    model = make_tiny_swin()
    with pytest.raises(NonFiniteLoss, match="train.nonfinite=skip"):  # stop: the update is checked one late, the
        train_one_epoch(model, NaNLoss(), batches(), torch.optim.AdamW(model.parameters(), lr=1e-3), CPU, 0,
                        progress=False)  # run ends (test_engine_loop: no checkpoint ever holds it)
    model = make_tiny_swin()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    stats = train_one_epoch(model, NaNLoss(), batches(), opt, CPU, 0, nonfinite="skip", progress=False)
    assert stats["skipped_steps"] == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class Lookup(torch.nn.Module):
    """Logits read from the input: class x[0] scores 3, class x[1] scores 2, the rest fall by class index."""

    def forward(self, x):
        logits = -0.01 * torch.arange(10.0).repeat(len(x), 1)
        for i, (c1, c2) in enumerate(x[:, :2].long().tolist()):
            logits[i, c1], logits[i, c2] = 3.0, 2.0
        return logits


def test_evaluate_counts_top1_and_top5_over_every_image():
    x = torch.tensor([[0, 1], [0, 1], [0, 1], [5, 6]], dtype=torch.float32)
    y = torch.tensor([0, 1, 4, 7])  # top-1 hit, top-5 hit, top-5 hit (5th), miss
    ev = evaluate(Lookup(), DataLoader(TensorDataset(x, y), batch_size=3), CPU, progress=False)
    assert ev["n"] == 4 and ev["top1"] == 25.0 and ev["top5"] == 75.0


def test_batch_sizes_and_lr_scaling():
    assert resolve_batches({"batch_size": 128, "accum_steps": 2}, 4).global_batch == 1024
    assert resolve_batches({"batch_size": 1, "global_batch": 1024}, 8).per_process == 128
    for bad in ({"batch_size": 0}, {"batch_size": 8, "global_batch": 1020}, {"batch_size": 8, "accum_steps": 0}):
        with pytest.raises(UserError):
            resolve_batches({"accum_steps": 1, **bad}, 8)
    lrs = scaled_lrs({"lr": 2e-5, "min_lr": 2e-7, "warmup_lr": 2e-8, "lr_base_batch": 512}, 1024)
    assert lrs == pytest.approx({"lr": 4e-5, "min_lr": 4e-7, "warmup_lr": 4e-8})


def test_schedule_warms_up_from_warmup_lr_then_decays_to_min_lr():
    model = make_tiny_swin()
    opt = build_optimizer(model, RECIPE, 1e-3)
    sched = build_scheduler(opt, RECIPE, {"lr": 1e-3, "min_lr": 1e-5, "warmup_lr": 1e-6}, updates_per_epoch=10)
    lrs = [opt.param_groups[0]["lr"]]
    for t in range(1, 21):
        sched.step_update(num_updates=t)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6) and max(lrs) == pytest.approx(1e-3, rel=0.05)
    assert lrs[10] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_checkpoints_rotate_and_a_corrupt_last_falls_back_to_prev(tmp_path, capsys):
    for epoch in range(3):
        save_checkpoint({"model": {"w": torch.full((2,), float(epoch))}, "masks": {}, "epoch": epoch}, tmp_path,
                        is_best=epoch == 1)
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "prev.pt", "best.pt"}
    assert load_latest(tmp_path)[0]["epoch"] == 2
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])  # torn write
    state, path = load_latest(tmp_path)
    assert state["epoch"] == 1 and path.name == "prev.pt"
    assert "last.pt is unreadable, falling back" in capsys.readouterr().out
    (tmp_path / "prev.pt").write_text("garbage")
    with pytest.raises(UserError, match="train.resume=false"):
        load_latest(tmp_path)


def test_rng_state_round_trip():
    seed_everything(3)
    state = rng_state()
    import random

    import numpy as np
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and (first[1] == second[1]).all() and first[2] == second[2]


def test_short_last_accumulation_group_is_divided_by_its_own_size():
    """3 batches with accum_steps=2 make 2 updates (timm: ceil), the second from one batch weighted as one."""
    x, y = (t for t in batches(12, 12).dataset.tensors)
    a, b = make_tiny_swin(drop_path_rate=0.0), make_tiny_swin(drop_path_rate=0.0)
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (a, b))
    loss = torch.nn.CrossEntropyLoss()
    stats = train_one_epoch(a, loss, batches(12, 4), opt_a, CPU, 0, accum_steps=2, progress=False)
    train_one_epoch(b, loss, [(x[:8], y[:8]), (x[8:], y[8:])], opt_b, CPU, 0, progress=False)
    assert stats["updates"] == 2 == updates_per_epoch(3, 2)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)


class BadGrad(torch.autograd.Function):
    """Identity forward, `value` x the gradient backward: a finite loss with NaN/inf gradients (as bf16 can)."""

    @staticmethod
    def forward(ctx, x, value):
        ctx.value = value
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.value, None


class FiniteLossBadGrads(torch.nn.Module):
    def __init__(self, value=float("nan")):
        super().__init__()
        self.value = value

    def forward(self, logits, target):
        return BadGrad.apply(torch.nn.functional.cross_entropy(logits, target), self.value)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_nan_gradients_under_a_finite_loss_stop_or_skip_and_never_reach_the_weights(clip):
    model = make_tiny_swin()
    with pytest.raises(NonFiniteLoss, match="train.nonfinite=skip"):
        train_one_epoch(model, FiniteLossBadGrads(), batches(), torch.optim.AdamW(model.parameters(), lr=1e-3), CPU,
                        0, clip_grad=clip, progress=False)
    model = make_tiny_swin()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    stats = train_one_epoch(model, FiniteLossBadGrads(), batches(), opt, CPU, 0, clip_grad=clip, nonfinite="skip",
                            progress=False)
    assert stats["skipped_steps"] == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_skipped_steps_in_a_row_stop_the_run():
    model = make_tiny_swin()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteLoss, match="3 optimizer steps in a row"):
        train_one_epoch(model, FiniteLossBadGrads(), batches(), opt, CPU, 0, nonfinite="skip", max_skipped_steps=3,
                        progress=False)


def test_fp16_grad_scaler_skips_are_counted_and_stop_the_run_after_k_in_a_row():
    model = make_tiny_swin()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = copy.deepcopy(model.state_dict())
    stats = train_one_epoch(model, FiniteLossBadGrads(float("inf")), batches(), opt, CPU, 0, scaler=scaler,
                            progress=False)  # fp16 overflows are routine: skipped (and counted), not fatal
    assert stats["skipped_steps"] == 4 and scaler.get_scale() == 2.0**12
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(NonFiniteLoss, match="2 optimizer steps in a row"):
        train_one_epoch(model, FiniteLossBadGrads(float("inf")), batches(), opt, CPU, 0, scaler=scaler,
                        max_skipped_steps=2, progress=False)
    stats = train_one_epoch(model, torch.nn.CrossEntropyLoss(), batches(), opt, CPU, 0, scaler=scaler,
                            progress=False)
    assert stats["skipped_steps"] == 0


def test_an_epoch_makes_one_collective_whatever_its_length_and_no_postfix_off_the_bar(monkeypatch):
    """No all_reduce per step (the finiteness decision comes from the gradient norm), and the rank that shows
    no progress bar neither formats a postfix nor waits for the loss (.item())."""
    from dimap.training import distributed, engine, progress
    calls, postfixes = [], []
    monkeypatch.setattr(distributed, "is_dist", lambda: True)  # as if under torchrun, the helpers' view only
    monkeypatch.setattr(distributed.dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, op=None: calls.append(t.shape))
    real_tqdm = progress.tqdm
    monkeypatch.setattr(progress, "on_terminal", lambda: True)  # the bar, as on a terminal

    class Bar(real_tqdm):
        def set_postfix(self, *a, **k):
            postfixes.append(k)

    monkeypatch.setattr(progress, "tqdm", Bar)
    model = make_tiny_swin()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), batches(32), opt, CPU, 0, progress=False)
    assert len(calls) == 1 and postfixes == []
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), batches(32), opt, CPU, 0, progress=True)
    assert 0 < len(postfixes) < 8


def test_bf16_needs_native_support_and_evaluation_is_fp32_unless_asked(monkeypatch):
    """V100/T4 report bf16 as supported because they emulate it; only native support counts."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    with pytest.raises(UserError, match="train.amp=fp16"):
        amp_dtype({"amp": "bf16"}, cuda)
    assert amp_dtype({"amp": "fp16"}, cuda) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # A100, H100
    assert amp_dtype({"amp": "bf16"}, cuda) == torch.bfloat16
    assert eval_amp_dtype({"amp": "bf16"}, cuda) is None
    assert eval_amp_dtype({"amp": "bf16", "eval_amp": True}, cuda) == torch.bfloat16


def test_paper_global_batch_is_reached_by_accumulation_on_fewer_gpus():
    paper = {"batch_size": 128, "global_batch": 1024, "accum_steps": None, "mixup": 0.8}
    got = {w: (b.per_process, b.accum_steps, b.global_batch) for w in (1, 2, 4, 8, 16)
           for b in [resolve_batches(paper, w)]}
    assert got == {1: (128, 8, 1024), 2: (128, 4, 1024), 4: (128, 2, 1024), 8: (128, 1, 1024), 16: (64, 1, 1024)}
    assert resolve_batches({**paper, "batch_size": 96}, 1).per_process == 64  # the largest that divides evenly


def test_an_odd_batch_per_process_is_refused_when_mixup_pairs_images():
    with pytest.raises(UserError, match="odd"):
        resolve_batches({"batch_size": 15, "cutmix": 1.0}, 1)
    with pytest.raises(UserError, match="odd"):
        resolve_batches({"batch_size": 128, "global_batch": 1000, "accum_steps": None, "mixup": 0.8}, 8)  # 125
    assert resolve_batches({"batch_size": 15, "mixup": 0.0, "cutmix": 0.0}, 1).per_process == 15


def test_each_rank_restores_its_own_rng_and_another_world_size_reseeds_per_rank():
    saved = []
    for rank in range(2):
        seed_everything(0, rank)
        saved.append(rng_state())
    streams = {}
    for rank in range(2):
        assert restore_rng_state(saved, rank, 2, seed=0, epoch=1)
        streams[rank] = torch.rand(4)
    for rank in range(2):
        set_rng_state(saved[rank])
        assert torch.equal(torch.rand(4), streams[rank]), f"rank {rank} did not get its own stream back"
    resumed = {}
    for rank in range(3):  # resumed on 3 processes: a distinct stream per rank, none of them rank 0's old one
        assert not restore_rng_state(saved, rank, 3, seed=0, epoch=1)
        resumed[rank] = torch.rand(4)
    draws = [streams[0], *resumed.values()]
    assert all(not torch.equal(a, b) for i, a in enumerate(draws) for b in draws[i + 1:])
