"""evaluate (top-1/top-5 counts, loss per image, sums over ranks, autocast) and the progress bars of the engine."""
import math

import pytest
import torch
from test_engine_loop import CE, CPU, ChannelsLastProbe, data, linear

from dimap.training import distributed, engine, progress
from dimap.training.engine import evaluate, train_one_epoch


class Bar(engine.tqdm):
    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kwargs, self.postfixes = kwargs, []
        Bar.made.append(self)

    def set_postfix(self, *args, **kwargs):
        self.postfixes.append((self.n, kwargs))
        super().set_postfix(*args, **kwargs)


def test_the_progress_bar_counts_every_batch_from_the_resume_point_and_shows_a_recent_loss(monkeypatch):
    monkeypatch.setattr(progress, "tqdm", Bar)
    monkeypatch.setattr(progress, "on_terminal", lambda: True)  # the bar: on a terminal (else lines, test_progress)
    Bar.made = []
    model, batches = linear(), data(45, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_one_epoch(model, CE, batches, opt, CPU, 3)  # progress on by default (the main rank)
    train_one_epoch(model, CE, batches[5:], opt, CPU, 3, start_step=5)
    train_one_epoch(model, CE, batches, opt, CPU, 3, progress=False)
    whole, resumed, hidden = Bar.made
    assert (whole.n, whole.total, resumed.n, resumed.total, resumed.kwargs["initial"]) == (45, 45, 45, 45, 5)
    assert "3" in whole.desc and whole.kwargs["disable"] is False and hidden.kwargs["disable"]
    assert whole.leave is False  # the bar goes when the epoch ends: not one left on screen per epoch
    steps = [n for n, _ in whole.postfixes]
    # the loss of step i is shown at step i + 1 (read one step late, no GPU sync), the last one when the epoch ends
    assert steps[0] == 20 and steps[-1] == 45 and max(b - a for a, b in zip(steps, steps[1:])) <= 20
    assert len(steps) <= 45 / 10, "the loss is read (a GPU sync) every step"
    last = whole.postfixes[-1][1]
    assert float(last["loss"]) == pytest.approx(CE(model(batches[-1][0]), batches[-1][1]).item(), abs=1e-4)
    assert float(last["lr"]) == 0.0


class Lookup(torch.nn.Module):
    def forward(self, x):
        assert not torch.is_grad_enabled() and not self.training
        return x.flatten(1)[:, :3]  # 3 classes: every label is within the top 5


def test_evaluate_sums_over_ranks_runs_without_gradients_and_handles_few_classes(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 2, 2, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    one = evaluate(Lookup().train(), loader, CPU, progress=False)
    logits = x.flatten(1)[:, :3]
    assert one["n"] == 6 and one["top5"] == 100.0
    assert one["top1"] == pytest.approx(100 * (logits.argmax(1) == y).double().mean().item())
    assert one["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    batch_sums = [torch.nn.functional.cross_entropy(lx.flatten(1)[:, :3], ly, reduction="sum") for lx, ly in loader]
    assert one["loss"] == sum(b.double() for b in batch_sums).item() / 6  # summed in float64, as the code says
    ranked = torch.arange(7.0).flip(0).repeat(2, 1)  # class 0 first ... class 6 last
    fifth_sixth = evaluate(torch.nn.Identity(), [(ranked, torch.tensor([4, 5]))], CPU, progress=False)
    assert (fifth_sixth["top1"], fifth_sixth["top5"]) == (0.0, 50.0)  # ranked 5th: a top-5 hit; 6th: a miss
    empty = evaluate(Lookup(), [], CPU, progress=False)  # a rank-less, image-less split: NaN, not a crash
    assert set(empty) == set(one) and empty["n"] == 0 and all(math.isnan(v) for k, v in empty.items() if k != "n")
    single = evaluate(Lookup(), [(x[:1], y[:1])], CPU, progress=False)
    assert single["n"] == 1 and single["top5"] == 100.0
    monkeypatch.setattr(distributed, "is_dist", lambda: True)  # two ranks holding the same images
    monkeypatch.setattr(distributed.dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, op=None: t.mul_(2))
    two = evaluate(Lookup(), loader, CPU, progress=False)
    assert two["n"] == 12 and two == pytest.approx({**one, "n": 12})


def test_evaluate_scores_fp32_logits_under_autocast_and_passes_channels_last(monkeypatch):
    model, (x, y) = ChannelsLastProbe(7), data(4, 4)[0]
    monkeypatch.setattr(engine, "tqdm", Bar)
    monkeypatch.setattr(engine, "on_terminal", lambda: True)
    Bar.made = []
    ev = evaluate(model, [(x, y)], CPU, amp_dtype=torch.bfloat16, channels_last=True, desc="val ema")
    evaluate(model, [(x, y)], CPU)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.conv(x).flatten(1)
    assert logits.dtype == torch.bfloat16 and model.seen == [True, False]
    assert ev["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits.float(), y).item(), rel=1e-6)
    evaluate(model, [(x, y)], CPU, progress=False)
    bar, _, hidden = Bar.made
    assert bar.desc.startswith("val ema") and bar.kwargs["disable"] is False and bar.leave is False
    assert hidden.kwargs["disable"]  # off the main rank: no bar
