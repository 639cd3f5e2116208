"""Checkpoint guards without a training run: which config changes refuse a resume (and the sentence naming them),
the best.pt copy when hard links fail, files that must not load, and reproducible per-rank seeding."""
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dimap.errors import UserError
from test_recipe import names_override
from dimap.training import checkpoint
from dimap.training.checkpoint import (RESUME_FREE, RESUME_FREE_DATA, RESUME_FREE_TRAIN, check_resumable,
                                       config_differences, load_latest, read_checkpoint, restore_rng_state,
                                       save_checkpoint, seed_everything)

CONFIG = {"seed": 0, "output_dir": "/runs/a", "model": {"name": "swin_t", "num_workers": 2},
          "data": {"root": "/data/in1k", "img_size": 224, "num_workers": 8, "eval_amp": False},
          "train": {"epochs": 30, "lr": 2e-5, "num_workers": 8, "resume": True, "root": "x"}}


def changed(**sections):
    """CONFIG with some values changed: changed(train={"epochs": 31}, seed=1)."""
    new = {k: dict(v) if isinstance(v, dict) else v for k, v in CONFIG.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and key in new:
            new[key].update(value)
        else:
            new[key] = value
    return new


def test_config_differences_name_every_changed_setting_by_its_dotted_key_in_order():
    assert config_differences(CONFIG, changed()) == []
    new = changed(seed=1, train={"epochs": 31, "lr": 4e-5}, data={"img_size": 256})
    assert config_differences(CONFIG, new) == ["data.img_size", "seed", "train.epochs", "train.lr"]
    assert config_differences(new, CONFIG) == ["data.img_size", "seed", "train.epochs", "train.lr"]


def test_settings_added_or_removed_between_runs_count_as_changes():
    old = changed(train={"ema": False})
    assert config_differences(old, CONFIG) == ["train.ema"]
    assert config_differences(CONFIG, {**CONFIG, "prune": {"ratio": 0.5}}) == ["prune"]
    assert config_differences(CONFIG, {**CONFIG, "model": None}) == ["model"]


def test_settings_that_do_not_change_what_is_trained_may_change_but_only_in_their_own_section():
    free = changed(output_dir="/runs/b", logger={"name": "wandb"}, hydra={"x": 1}, device="cuda:1", paths={"p": 1},
                   train={k: "other" for k in RESUME_FREE_TRAIN}, data={k: "other" for k in RESUME_FREE_DATA})
    assert set(RESUME_FREE) <= set(free) and config_differences(CONFIG, free) == []
    # the same names elsewhere are not free: data has no `resume`, train no `root`, the model no `num_workers`
    new = changed(model={"num_workers": 4}, train={"root": "y"}, data={"eval_amp": True})
    assert config_differences(CONFIG, new) == ["data.eval_amp", "model.num_workers", "train.root"]


def test_a_changed_config_is_refused_naming_the_keys_the_folder_and_the_fix(tmp_path):
    state = {"config": CONFIG, "global_batch": 1024, "world_size": 8}
    check_resumable(None, CONFIG, 1024, tmp_path)  # nothing to resume
    check_resumable(state, changed(train={"num_workers": 2}), 1024, tmp_path)
    with pytest.raises(UserError) as e:
        check_resumable(state, changed(train={"epochs": 31, "lr": 1e-4}), 1024, tmp_path)
    msg = str(e.value)
    assert "train.epochs, train.lr" in msg and str(tmp_path) in msg and names_override(msg, "train.resume=false")


def test_another_global_batch_is_refused_naming_both_batches_and_the_process_count(tmp_path):
    state = {"config": CONFIG, "global_batch": 1024, "world_size": 8}
    with pytest.raises(UserError) as e:
        check_resumable(state, CONFIG, 512, tmp_path)
    msg = str(e.value)
    assert all(s in msg for s in ("1024", "512", "8 process", str(tmp_path)))
    assert names_override(msg, "train.resume=false")
    old = {"config": CONFIG}  # a checkpoint from before global_batch was stored: nothing to compare
    check_resumable(old, CONFIG, 512, tmp_path)


def test_best_pt_is_a_full_copy_when_hard_links_fail(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError("hard links not supported on this file system")

    monkeypatch.setattr(os, "link", no_links)
    ckpt = tmp_path / "out" / "checkpoints"  # neither folder exists yet
    for epoch in range(2):
        save_checkpoint({"model": {"w": torch.full((2,), float(epoch))}, "masks": {}, "epoch": epoch}, ckpt,
                        is_best=True)
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.pt", "last.pt", "prev.pt"]  # no temporary left
    best = read_checkpoint(ckpt / "best.pt")
    assert best["epoch"] == 1 and torch.equal(best["model"]["w"], torch.ones(2))
    assert os.stat(ckpt / "best.pt").st_ino != os.stat(ckpt / "last.pt").st_ino


def test_a_best_pt_copy_dying_half_way_keeps_the_previous_best(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError("no links")))
    save_checkpoint({"model": {}, "masks": {}, "epoch": 0}, tmp_path, is_best=True)
    real_save, calls = torch.save, []

    def second_write_dies(obj, f, *args, **kwargs):  # last.pt is written, then the best.pt copy fails
        calls.append(1)
        real_save(obj, f, *args, **kwargs)
        if len(calls) == 2:
            f.truncate(10)
            raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", second_write_dies)
    with pytest.raises(OSError):
        save_checkpoint({"model": {}, "masks": {}, "epoch": 1}, tmp_path, is_best=True)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == 0 and read_checkpoint(tmp_path / "last.pt")["epoch"] == 1


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["DIMAP_TEST_MARKER"]),))


def test_a_checkpoint_carrying_code_is_refused_unrun(tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("DIMAP_TEST_MARKER", str(marker))
    torch.save({"model": {}, "masks": {}, "epoch": 0, "extra": Payload()}, tmp_path / "last.pt")
    with pytest.raises(UserError, match="train.resume=false"):
        read_checkpoint(tmp_path / "last.pt")
    # torch's switch back to full unpickling for callers that leave weights_only unset must not reach us
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UserError, match="train.resume=false"):
        read_checkpoint(tmp_path / "last.pt")
    assert not marker.exists()


def test_unreadable_and_foreign_files_are_refused_naming_the_file_and_the_cause(tmp_path):
    torch.save({"model": {}, "epoch": 0}, tmp_path / "no_masks.pt")  # loads, but is not ours
    with pytest.raises(UserError) as e:
        read_checkpoint(tmp_path / "no_masks.pt")
    assert "no_masks.pt" in str(e.value) and "train.resume=false" in str(e.value)
    (tmp_path / "last.pt").write_bytes(b"garbage")
    try:
        torch.load(tmp_path / "last.pt", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch raises is what the message should name
        cause = type(err).__name__
    with pytest.raises(UserError) as e:
        load_latest(tmp_path, log=lambda *a: None)  # only last.pt, and it is unreadable: no prev.pt to fall to
    assert "last.pt" in str(e.value) and cause in str(e.value)


def draws():
    return torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()


def test_seeding_is_reproducible_per_source_and_distinct_per_seed_and_rank():
    seed_everything(5)
    a = draws()
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    assert a == draws(), "rank 0 of seed 5 is what a user's own torch/numpy/random seeding of 5 gives"
    streams = {}
    for seed, rank in [(3, 0), (5, 0), (3, 1), (2**32 + 3, 0)]:  # numpy takes 32 bits of a larger seed
        seed_everything(seed, rank)
        streams[seed, rank] = draws()
    assert all(len({s[i] if i == 2 else tuple(s[i]) for s in [streams[3, 0], streams[5, 0], streams[3, 1]]}) == 3
               for i in range(3))
    assert streams[2**32 + 3, 0][1] == streams[3, 0][1]


def test_resuming_on_another_world_size_reseeds_the_same_way_every_time():
    saved = [{"unused": True}] * 2
    first = [(restore_rng_state(saved, r, 3, seed=7, epoch=2), torch.rand(1).item()) for r in range(3)]
    again = [(restore_rng_state(saved, r, 3, seed=7, epoch=2), torch.rand(1).item()) for r in range(3)]
    assert first == again and len({v for _, v in first}) == 3
    other_epoch = [(restore_rng_state(saved, r, 3, seed=7, epoch=3), torch.rand(1).item()) for r in range(3)]
    assert other_epoch != first
