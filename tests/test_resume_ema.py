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


def test_the_mask_holds_on_the_ema_weights_after_a_resume(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    interrupt_after_checkpoints(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, *EMA, "train.weight_decay=0.5")
    monkeypatch.undo()
    run(tmp_path, *EMA, "train.weight_decay=0.5")
    sd, masks = weights(tmp_path), load_file(str(tmp_path / "masks.safetensors"))  # the EMA's weights are saved
    assert all(torch.all(sd[n][~m] == 0) for n, m in masks.items())
