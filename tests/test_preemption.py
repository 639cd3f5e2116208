"""Preemption: SIGTERM in the middle of an epoch ends the run after that step with a mid-epoch checkpoint and exit
status 128 + 15; the same command resumes there and ends with the weights of an uninterrupted run. Also
train.checkpoint_every_steps for clusters that kill without warning."""
import json
import os
import signal

import pytest
import torch

from dimap.training import finetune as finetune_mod
from tests.test_train_cli import interrupt_after_checkpoints, run, weights

LONGER = ["train.epochs=2", "train.max_steps_per_epoch=5"]


class SignalAt(torch.nn.Module):
    """Cross-entropy that sends this process `signum` during its `at`-th call (a forward pass mid-step)."""

    def __init__(self, at, signum=signal.SIGTERM):
        super().__init__()
        self.calls, self.at, self.signum = 0, at, signum

    def forward(self, logits, target):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return torch.nn.functional.cross_entropy(logits, target)


def plain_loss(cfg, n):
    return None, torch.nn.CrossEntropyLoss()


@pytest.mark.parametrize("signum, at", [(signal.SIGTERM, 8), (signal.SIGUSR1, 3)])
def test_a_signal_mid_epoch_checkpoints_after_the_step_and_the_resumed_run_equals_an_uninterrupted_one(
        tmp_path, monkeypatch, capsys, signum, at):
    monkeypatch.setattr(finetune_mod, "build_mixup_and_loss", plain_loss)
    straight = run(tmp_path / "straight", *LONGER)
    out = tmp_path / "preempted"
    monkeypatch.setattr(finetune_mod, "build_mixup_and_loss", lambda cfg, n: (None, SignalAt(at, signum)))
    with pytest.raises(SystemExit) as e:
        run(out, *LONGER)
    assert e.value.code == 128 + signum
    assert f"caught {signal.Signals(signum).name}" in capsys.readouterr().out
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"] + 1, state["step"]) == divmod(at, 5)  # stopped right after the signalled step
    assert not (out / "summary.json").exists() and not (out / ".lock").exists()
    assert signal.getsignal(signum) is signal.SIG_DFL or signum != signal.SIGTERM  # handlers given back

    monkeypatch.setattr(finetune_mod, "build_mixup_and_loss", plain_loss)
    resumed = run(out, *LONGER)  # the same command
    assert f"resuming epoch {at // 5} at step {at % 5}" in capsys.readouterr().out
    a, b = weights(tmp_path / "straight"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["top1"] == straight["top1"]
    logs = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
            for d in (tmp_path / "straight", out)]
    assert [(r["epoch"], r["train_loss"]) for r in logs[0]] == [(r["epoch"], r["train_loss"]) for r in logs[1]]


def test_checkpoint_every_steps_resumes_mid_epoch_after_a_kill_without_warning(tmp_path, monkeypatch, capsys):
    run(tmp_path / "straight", *LONGER)
    out = tmp_path / "killed"
    interrupt_after_checkpoints(monkeypatch, 3)  # steps 2 and 4 of epoch 0, then the end of epoch 0... killed
    with pytest.raises(KeyboardInterrupt):
        run(out, *LONGER, "train.checkpoint_every_steps=2")
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 0
    monkeypatch.undo()
    interrupt_after_checkpoints(monkeypatch, 1)  # resumes at epoch 1, killed after its step 2
    with pytest.raises(KeyboardInterrupt):
        run(out, *LONGER, "train.checkpoint_every_steps=2")
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)
    monkeypatch.undo()
    run(out, *LONGER)  # resumes at epoch 1, step 2 (checkpoint_every_steps may change between runs)
    assert "resuming epoch 1 at step 2" in capsys.readouterr().out
    a, b = weights(tmp_path / "straight"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
