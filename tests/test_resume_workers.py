"""Exact mid-epoch resume with loader workers: each image's augmentation is a function of (seed, epoch, index)
(dimap.training.item_seeds), so a run stopped mid-epoch and resumed, with 2 workers or another worker count,
ends with the weights of an uninterrupted run, and 0 and 2 workers train the same weights."""
import signal

import pytest
import torch

from dimap.training import finetune as finetune_mod
from tests.test_preemption import SignalAt, plain_loss
from tests.test_train_cli import run, weights

# 5 batches per epoch, random crops on (mnist5k's train transform), drop path on: the RNG of the data and of the
# main process both matter
LONGER = ["train.epochs=2", "train.max_steps_per_epoch=5", "model.drop_path_rate=0.1"]


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("resume_workers", [2, 0])
def test_a_run_stopped_mid_epoch_with_2_workers_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch,
                                                                                      resume_workers):
    monkeypatch.setattr(finetune_mod, "build_mixup_and_loss", plain_loss)
    run(tmp_path / "w2", *LONGER, "data.num_workers=2")
    run(tmp_path / "w0", *LONGER, "data.num_workers=0")
    assert same(weights(tmp_path / "w2"), weights(tmp_path / "w0"))  # the worker count changes nothing

    out = tmp_path / "stopped"
    monkeypatch.setattr(finetune_mod, "build_mixup_and_loss", lambda cfg, n: (None, SignalAt(3, signal.SIGUSR1)))
    with pytest.raises(SystemExit):
        run(out, *LONGER, "data.num_workers=2")
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 3  # mid-epoch, an odd step
    monkeypatch.setattr(finetune_mod, "build_mixup_and_loss", plain_loss)
    run(out, *LONGER, f"data.num_workers={resume_workers}")
    assert same(weights(tmp_path / "w2"), weights(out))
