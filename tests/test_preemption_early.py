"""A signal before finetuning (during dense pretraining, during pruning) ends the run the usual way: after the
current step, every rank together, exit 128 + signal (submitit's requeue on a cluster), nothing half-written, and
the same command then runs to the end."""
import signal

import pytest

import train
from dimap.training import pretrain as pretrain_mod
from tests.test_preemption import SignalAt
from tests.test_train_cli import run


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_a_signal_during_dense_pretraining_stops_after_the_step_with_the_requeue_exit(tmp_path, monkeypatch, capsys,
                                                                                      signum):
    out, args = tmp_path / "run", ("pretrain.epochs=2", "train.epochs=1")
    real = pretrain_mod.build_mixup_and_loss
    monkeypatch.setattr(pretrain_mod, "build_mixup_and_loss", lambda cfg, n: (None, SignalAt(2, signum)))
    with pytest.raises(SystemExit) as e:
        run(out, *args)
    assert e.value.code == 128 + signum
    printed = capsys.readouterr().out
    assert f"caught {signal.Signals(signum).name}" in printed
    assert "stopped in pretraining epoch 0 after step 2" in printed  # one update after the signalled one
    assert not (tmp_path / "cache" / "pretrain").exists() or not list((tmp_path / "cache" / "pretrain").iterdir())
    assert not (out / "summary.json").exists() and not (out / ".lock").exists()
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)  # handlers given back

    monkeypatch.setattr(pretrain_mod, "build_mixup_and_loss", real)
    assert run(out, *args)["epochs"] == 1  # the same command finishes


def test_a_signal_during_pruning_exits_with_the_requeue_status_before_anything_is_written(tmp_path, monkeypatch,
                                                                                         capsys):
    import os
    real = train.masks_for_training_run

    def pruning_interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGUSR1)
        return real(*a, **k)

    monkeypatch.setattr(train, "masks_for_training_run", pruning_interrupted)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run(out, "train.epochs=1")
    assert e.value.code == 128 + signal.SIGUSR1
    assert "stopped after pruning, before anything was written" in capsys.readouterr().out
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []
