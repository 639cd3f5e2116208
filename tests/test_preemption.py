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


def test_under_submitit_its_own_handler_requeues_after_the_checkpoint(tmp_path, monkeypatch):
    """submitit's SIGUSR2 handler (SignalHandler.checkpoint_and_try_requeue: scontrol requeue, then exit) runs
    once the mid-epoch checkpoint is on disk."""
    seen = []

    def checkpoint_and_try_requeue(signum, frame):  # stands for submitit's bound method of that name
        seen.append(torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"])
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, checkpoint_and_try_requeue)
    try:
        monkeypatch.setattr(finetune_mod, "build_mixup_and_loss", lambda cfg, n: (None, SignalAt(2, signal.SIGUSR2)))
        with pytest.raises(SystemExit) as e:
            run(tmp_path, *LONGER)
        assert e.value.code == -1 and seen == [2]
        assert signal.getsignal(signal.SIGUSR2) is checkpoint_and_try_requeue  # given back
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.slow
def test_sigterm_to_the_train_process_mid_epoch_then_the_same_command_resumes(tmp_path):
    """The real entry point and a real signal from outside; epochs long enough (150 steps) that a SIGTERM sent
    1 s into epoch 1 lands inside it. num_workers=0: bit-exact (workers would restart their random streams)."""
    import time
    from tests.test_failures import KILLABLE, train_cli
    args = [o for o in KILLABLE if not o.startswith(("train.max_steps_per_epoch", "train.epochs", "data.num_workers"))]
    args += ["train.max_steps_per_epoch=150", "train.epochs=2", "data.num_workers=0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    proc = train_cli(stopped, *args)
    deadline = time.time() + 240
    while not (stopped / "log.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # into epoch 1
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    state = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["step"] < 150 and "stopped in epoch 1" in out
    resumed = train_cli(stopped, *args)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and f"resuming epoch 1 at step {state['step']}" in out, err[-2000:]
    uninterrupted = train_cli(straight, *args)
    assert uninterrupted.wait(timeout=300) == 0
    a, b = weights(straight), weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
