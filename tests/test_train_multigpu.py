"""train.py's side of the multi-GPU path, in-process on the shrunken demo: schedule length under
accumulation, resuming on another global batch, the loaded checkpoint freed, fp32 evaluation (the odd Mixup batch
is in tests/test_failures.py's catalogue)."""
import gc
import weakref

import pytest
import torch
from test_train_cli import interrupt_after_checkpoints, run

import train
from dimap.training import finetune as finetune_mod
from dimap.training import recipe


def test_schedule_counts_the_short_last_accumulation_group(tmp_path):
    """3 batches an epoch, accum_steps=2: 2 updates an epoch (timm: ceil), so the cosine spans 2 x 2 updates."""
    run(tmp_path, "train.epochs=2", "train.warmup_epochs=0", "train.max_steps_per_epoch=3", "train.accum_steps=2")
    sched = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["scheduler"]
    assert sched["t_initial"] == 4


def test_resuming_on_another_global_batch_is_refused(tmp_path, monkeypatch, capsys):
    interrupt_after_checkpoints(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "train.epochs=2")
    monkeypatch.undo()
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    # The same command on 2 processes: batch_size is per process, so the global batch would double.
    monkeypatch.setattr(train, "init_distributed", lambda device: (torch.device("cpu"), 0, 2))
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "train.epochs=2")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "global batch 16 on 1 process(es), here it would be 32" in err
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_the_loaded_checkpoint_is_freed_once_restored(tmp_path, monkeypatch):
    """No rank keeps the loaded model, EMA and optimizer tensors referenced for the run (GBs on a Swin-B node),
    except the optimizer state tensors that the optimizer itself adopted (same device and dtype: no copy)."""
    interrupt_after_checkpoints(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "train.epochs=2", "train.ema=true")
    monkeypatch.undo()
    loaded, real_load, real_epoch = [], train.load_latest, finetune_mod.train_one_epoch

    def load(*args, **kwargs):
        state, path = real_load(*args, **kwargs)
        loaded.extend(weakref.ref(t) for t in [*state["model"].values(), *state["ema"].values(),
                                              *(t for s in state["optimizer"]["state"].values() for t in s.values())])
        return state, path

    alive = []

    def epoch(*args, **kwargs):
        gc.collect()
        adopted = {id(t) for s in args[3].state.values() for t in s.values()}  # args[3]: the optimizer
        alive.append(sum(r() is not None and id(r()) not in adopted for r in loaded))
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "load_latest", load)
    monkeypatch.setattr(finetune_mod, "train_one_epoch", epoch)
    run(tmp_path, "train.epochs=2", "train.ema=true")
    assert len(loaded) > 100 and alive == [0]


def test_evaluation_is_fp32_unless_eval_amp(tmp_path, monkeypatch):
    """With train.amp on, evaluation (pruned and every epoch) still runs in fp32 by default."""
    seen = []
    real = finetune_mod.evaluate

    def evaluate(*args, amp_dtype=None, **kwargs):
        seen.append(amp_dtype)
        return real(*args, amp_dtype=amp_dtype, **kwargs)

    bf16 = lambda cfg, device: torch.bfloat16  # noqa: E731  (as on a GPU with train.amp=bf16; CPU autocast works)
    for module in (recipe, finetune_mod):
        monkeypatch.setattr(module, "amp_dtype", bf16)
    monkeypatch.setattr(finetune_mod, "evaluate", evaluate)
    monkeypatch.setattr(train, "evaluate", evaluate)
    run(tmp_path / "fp32", "train.epochs=1")
    assert seen == [None, None]
    seen.clear()
    run(tmp_path / "amp", "train.epochs=1", "train.eval_amp=true")
    assert seen == [torch.bfloat16] * 2

