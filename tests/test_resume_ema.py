"""Resuming a run with EMA on: the EMA weights come back from the checkpoint (the other resume tests run
without EMA, so a resume that rebuilt the EMA from the model weights would pass them)."""
import pytest
import torch

from tests.test_train_cli import interrupt_after_checkpoints, run, weights

EMA = ("train.epochs=2", "train.ema=true", "train.ema_decay=0.5")


def test_resume_with_ema_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(straight, *EMA)
    interrupt_after_checkpoints(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(resumed, *EMA)
    monkeypatch.undo()
    run(resumed, *EMA)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
