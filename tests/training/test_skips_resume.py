"""The count of skipped steps in a row survives a mid-epoch stop: resumed, the run stops at the same step as an
uninterrupted one (train.max_skipped_steps), and finetune's mid-epoch checkpoint stores the count."""
import pytest
import torch

from dimap.training.engine import NonFiniteLoss, train_one_epoch
from tests.training.test_engine_loop import BadOn, data, linear

CPU = torch.device("cpu")


def test_skips_in_a_row_before_the_stop_count_after_the_resumption():
    with pytest.raises(NonFiniteLoss, match=r"3 optimizer steps in a row .*step 4\)"):  # batches 2, 3, 4
        train_one_epoch(linear(), BadOn({2, 3, 4}), data(12, 2), torch.optim.SGD(linear().parameters(), lr=0.1),
                        CPU, 0, nonfinite="skip", max_skipped_steps=3, progress=False)

    model = linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cut = train_one_epoch(model, BadOn({2, 3}), data(12, 2), opt, CPU, 0, nonfinite="skip", max_skipped_steps=3,
                          on_update=lambda step, *_: step == 4, progress=False)  # stopped after batch 3
    assert (cut["stopped_at"], cut["skipped_steps"], cut["in_a_row"]) == (4, 2, 2)
    with pytest.raises(NonFiniteLoss, match=r"3 optimizer steps in a row .*step 4\)"):
        train_one_epoch(model, BadOn({0}), data(12, 2)[4:], opt, CPU, 0, nonfinite="skip", max_skipped_steps=3,
                        start_step=4, totals=cut["totals"], skipped=cut["skipped_steps"], in_a_row=cut["in_a_row"],
                        progress=False)


def test_the_mid_epoch_checkpoint_stores_the_count(tmp_path, monkeypatch):
    import signal

    from dimap.training import finetune as finetune_mod
    from tests.test_preemption import SignalAt
    from tests.test_train_cli import run

    class SkipThenSignal(SignalAt):  # batch 1's gradients NaN and a signal during it: the stop comes after it
        def forward(self, logits, target):
            loss = super().forward(logits, target)
            return loss + 0 * logits.sum() * float("nan") if self.calls == 2 else loss

    monkeypatch.setattr(finetune_mod, "build_mixup_and_loss", lambda cfg, n: (None, SkipThenSignal(2, signal.SIGUSR1)))
    with pytest.raises(SystemExit):
        run(tmp_path, "train.epochs=1", "train.max_steps_per_epoch=5", "train.nonfinite=skip")
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2 and state["partial"][0]["skipped"] == 1 and state["partial"][0]["in_a_row"] == 1
