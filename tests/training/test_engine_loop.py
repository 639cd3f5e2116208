"""train_one_epoch against manual loops on a linear model (fast): the logged loss, the update count the schedule
sees, a preempted epoch resumed, skips, EMA, DDP's no_sync, autocast and Mixup."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
from test_recipe import names_override
from timm.utils import ModelEmaV3

from dimap.pruning.masks import FixedMask
from dimap.training.engine import NonFiniteLoss, train_one_epoch, unwrap

CPU = torch.device("cpu")
CE = torch.nn.CrossEntropyLoss()


def linear(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))


def data(n=6, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, 5, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


class Updates:
    """A scheduler that records the update index it is stepped with."""

    def __init__(self):
        self.seen = []

    def step_update(self, num_updates):
        self.seen.append(num_updates)


def test_logged_loss_is_the_float64_mean_of_every_batch_loss():
    model, batches = linear(), data(10, 2)
    with torch.no_grad():
        want = torch.tensor([CE(model(x), y).item() for x, y in batches], dtype=torch.float64).mean().item()
    for accum in (1, 2, 3):  # lr 0: the model does not move, so the losses are the ones computed above
        stats = train_one_epoch(model, CE, batches, torch.optim.SGD(model.parameters(), lr=0.0), CPU, 0,
                                accum_steps=accum, progress=False)
        assert stats["train_loss"] == pytest.approx(want, rel=1e-12, abs=0), accum
    one = train_one_epoch(model, CE, batches[:1], torch.optim.SGD(model.parameters(), lr=0.0), CPU, 0,
                          progress=False)
    assert one["train_loss"] == pytest.approx(CE(model(batches[0][0]), batches[0][1]).item(), rel=1e-6)


def test_accumulating_three_micro_batches_is_one_step_on_their_union():
    a, b = linear(), linear()
    batches = data(12, 2)
    train_one_epoch(a, CE, batches, torch.optim.SGD(a.parameters(), lr=0.5), CPU, 0, accum_steps=3, progress=False)
    opt = torch.optim.SGD(b.parameters(), lr=0.5)
    for k in (0, 3):
        x, y = torch.cat([batches[k + j][0] for j in range(3)]), torch.cat([batches[k + j][1] for j in range(3)])
        CE(b(x), y).backward()
        opt.step()
        opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_a_preempted_epoch_resumed_from_its_step_equals_the_uninterrupted_one():
    batches, epoch, accum = data(14, 2), 1, 2  # 7 batches: 3 groups of 2 and a short one
    whole, sched_whole = linear(), Updates()
    full = train_one_epoch(whole, CE, batches, torch.optim.SGD(whole.parameters(), lr=0.5), CPU, epoch,
                           accum_steps=accum, scheduler=sched_whole, progress=False)
    assert sched_whole.seen == [5, 6, 7, 8] and full["updates"] == 8  # epoch 1 of 4 updates each: updates 5..8
    part, sched_part, calls = linear(), Updates(), []
    opt = torch.optim.SGD(part.parameters(), lr=0.5)

    def preempt(step, totals, skipped, in_a_row, settle):
        calls.append((step, totals.clone(), skipped))
        return step == 2

    cut = train_one_epoch(part, CE, batches, opt, CPU, epoch, accum_steps=accum, scheduler=sched_part,
                          on_update=preempt, progress=False)
    assert cut["stopped_at"] == 2 and cut["updates"] == 5 and cut["skipped_steps"] == 0 and len(calls) == 1
    assert calls[0][0] == 2 and torch.equal(calls[0][1], cut["totals"]) and cut["totals"][1] == 2
    assert calls[0][2] == 0  # the skipped steps so far, which the preemption checkpoint stores
    rest = train_one_epoch(part, CE, batches[2:], opt, CPU, epoch, accum_steps=accum, scheduler=sched_part,
                           start_step=2, totals=cut["totals"], skipped=cut["skipped_steps"], progress=False)
    assert sched_part.seen == [5, 6, 7, 8] and rest["updates"] == 8 and type(rest["updates"]) is int
    assert rest["train_loss"] == pytest.approx(full["train_loss"], rel=1e-12)
    for pa, pb in zip(whole.parameters(), part.parameters()):
        torch.testing.assert_close(pa, pb)


def test_max_steps_caps_the_epoch():
    model, sched = linear(), Updates()
    stats = train_one_epoch(model, CE, data(8, 2), torch.optim.SGD(model.parameters(), lr=0.1), CPU, 0,
                            scheduler=sched, max_steps=2, progress=False)
    assert sched.seen == [1, 2] and stats["updates"] == 2


class BadOn(torch.nn.Module):
    """Cross-entropy whose gradients are NaN on the listed batches (a finite loss, as under bf16)."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.i = set(bad), -1

    def forward(self, logits, y):
        self.i += 1
        loss = CE(logits, y)
        return loss + 0 * logits.sum() * float("nan") if self.i in self.bad else loss


def test_skips_are_counted_and_only_skips_in_a_row_stop_the_run():
    model = linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, BadOn({0, 2}), data(8, 2), opt, CPU, 0, nonfinite="skip", max_skipped_steps=2,
                            progress=False)
    assert stats["skipped_steps"] == 2 and math.isfinite(stats["train_loss"])
    with pytest.raises(NonFiniteLoss) as e:
        train_one_epoch(model, BadOn({1, 2}), data(8, 2), opt, CPU, 0, nonfinite="skip", max_skipped_steps=2,
                        progress=False)
    assert "2 optimizer steps in a row" in str(e.value)
    assert names_override(str(e.value), "train.amp=bf16") and "train.lr" in str(e.value)


class InfOn(torch.nn.Module):
    """Cross-entropy whose gradients are infinite on the listed batches (a finite loss)."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.i = set(bad), -1

    def forward(self, logits, y):
        self.i += 1
        loss = CE(logits, y)
        return _InfGrad.apply(loss) if self.i in self.bad else loss


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.mark.parametrize("k", [0, 3])
def test_the_norm_checked_one_update_late_stops_at_the_same_step_and_no_checkpoint_holds_the_bad_update(k):
    """nonfinite=stop reads the gradient norm one update late (no host sync per update): the error names the same
    step as an immediate check would, and an on_update that checkpoints (calling settle first, as finetune does)
    never sees the weights the bad update made."""
    model, saved = linear(), []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def checkpoint_every_update(step, totals, skipped, in_a_row, settle):
        settle()
        saved.append((step, copy.deepcopy(model.state_dict())))
        return False

    with pytest.raises(NonFiniteLoss) as e:
        train_one_epoch(model, InfOn({k}), data(12, 2), opt, CPU, 0, on_update=checkpoint_every_update,
                        progress=False)
    assert f"at epoch 0, step {k}:" in str(e.value) and "gradient norm became nan" in str(e.value)  # inf x 0
    assert [step for step, _ in saved] == list(range(1, k + 1))  # every good update saved, the bad one never
    reference = linear()  # the good updates by hand
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for x, y in data(12, 2)[:k]:
        CE(reference(x), y).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    last = saved[-1][1] if saved else linear().state_dict()
    assert all(torch.equal(last[n], p) for n, p in reference.state_dict().items())
    # ...and at the end of an epoch whose last update is the bad one, before the loss is reported
    with pytest.raises(NonFiniteLoss, match="step 5:"):
        train_one_epoch(linear(), InfOn({5}), data(12, 2), torch.optim.SGD(model.parameters(), lr=0.1), CPU, 0,
                        progress=False)


def test_skip_mode_skips_and_counts_an_inf_gradient_at_step_k_exactly():
    model, reference = linear(), linear()
    stats = train_one_epoch(model, InfOn({2}), data(12, 2), torch.optim.SGD(model.parameters(), lr=0.1), CPU, 0,
                            nonfinite="skip", progress=False)
    assert stats["skipped_steps"] == 1
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for i, (x, y) in enumerate(data(12, 2)):
        if i != 2:  # the skipped batch never reaches the weights
            CE(reference(x), y).backward()
            ref_opt.step()
        ref_opt.zero_grad()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


class Unused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net, self.spare = linear(), torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.net(x)


def test_no_gradient_is_carried_in_or_held_after_the_epoch():
    model = Unused()
    model.spare.grad = torch.ones(3)  # stale, from before the epoch
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    train_one_epoch(model, CE, data(), opt, CPU, 0, progress=False)
    assert torch.equal(model.spare.detach(), torch.ones(3)), "a parameter without gradient was stepped"
    assert all(p.grad is None for p in model.parameters()), "gradient memory held after the epoch"


def test_ema_follows_every_applied_update_and_keeps_pruned_weights_zero():
    model, masks = linear(), {"1.weight": torch.rand(5, 12, generator=torch.Generator().manual_seed(1)) > 0.5}
    FixedMask(model, masks).apply()
    manual = copy.deepcopy(model)
    ema = ModelEmaV3(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_one_epoch(model, CE, data(), opt, CPU, 0, fixed_mask=FixedMask(model, masks), ema=ema,
                    ema_mask=FixedMask(ema.module, masks), progress=False)
    ref, ref_opt, ref_mask = ModelEmaV3(manual, decay=0.5), torch.optim.SGD(manual.parameters(), lr=0.5), \
        FixedMask(manual, masks)
    for t, (x, y) in enumerate(data(), start=1):
        CE(manual(x), y).backward()
        ref_mask.mask_grads()
        ref_opt.step()
        ref_opt.zero_grad()
        ref_mask.apply()
        ref.update(manual, step=t)  # the run's update count: timm's EMA starts as a copy at update 1
    for (name, a), b in zip(ema.module.named_parameters(), ref.module.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    assert torch.all(ema.module[1].weight[~masks["1.weight"]] == 0)
    ema_plain = ModelEmaV3(model, decay=0.5)
    train_one_epoch(model, CE, data(), opt, CPU, 0, ema=ema_plain, progress=False)  # no mask to apply
    assert not torch.equal(ema_plain.module[1].weight, model[1].weight)


class DDPLike(torch.nn.Module):
    """DistributedDataParallel's interface: `.module` and a no_sync() context, recorded."""

    def __init__(self, module):
        super().__init__()
        self.module, self.synced = module, []
        self._in_no_sync = False

    def no_sync(self):
        outer = self

        class Ctx:
            def __enter__(self):
                outer._in_no_sync = True

            def __exit__(self, *exc):
                outer._in_no_sync = False
        return Ctx()

    def forward(self, x):
        self.synced.append(not self._in_no_sync)
        return self.module(x)


def test_gradients_are_all_reduced_only_on_the_micro_batch_that_steps():
    model = DDPLike(linear())
    train_one_epoch(model, CE, data(10, 2), torch.optim.SGD(model.parameters(), lr=0.1), CPU, 0, accum_steps=2,
                    progress=False)
    assert model.synced == [False, True, False, True, True]  # 5 batches: 2 + 2 + a short group of 1
    compiled = SimpleNamespace(_orig_mod=model)  # what torch.compile returns, without compiling (slow)
    assert unwrap(compiled) is model.module and unwrap(model) is model.module and unwrap(model.module) is model.module


class ChannelsLastProbe(torch.nn.Module):
    """A conv classifier that records, per forward, whether its input arrived in channels_last (and only in it)."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv, self.seen = torch.nn.Conv2d(3, classes, 2), []

    def forward(self, x):
        self.seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.conv(x).flatten(1)


def test_amp_dtype_runs_the_forward_under_autocast_and_channels_last_reaches_the_model():
    dtypes = []
    loss = lambda logits, y: (dtypes.append(logits.dtype), CE(logits.float(), y))[1]  # noqa: E731
    model = ChannelsLastProbe(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, loss, data(2, 2), opt, CPU, 0, amp_dtype=torch.bfloat16, channels_last=True,
                    progress=False)
    train_one_epoch(model, loss, data(2, 2), opt, CPU, 0, progress=False)
    assert dtypes == [torch.bfloat16, torch.float32] and model.seen == [True, False]


def test_mixup_output_is_what_the_model_and_the_loss_see():
    model, batches = linear(), data(4, 2)
    mix = lambda x, y: (0.5 * (x + x.flip(0)), torch.nn.functional.one_hot(y, 5).float())  # noqa: E731
    soft = lambda logits, t: -(t * logits.log_softmax(-1)).sum(-1).mean()  # noqa: E731
    stats = train_one_epoch(model, soft, batches, torch.optim.SGD(model.parameters(), lr=0.0), CPU, 0,
                            mixup_fn=mix, progress=False)
    with torch.no_grad():
        want = sum(soft(model(mx), t).item() for mx, t in (mix(x, y) for x, y in batches)) / len(batches)
    assert stats["train_loss"] == pytest.approx(want, rel=1e-9)
