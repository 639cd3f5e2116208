"""train.py in-process on a shrunken demo config: what it writes, resume, failures and refusals."""
import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402
from dimap.training import finetune as finetune_mod  # noqa: E402
from dimap.pruning.masks import mask_checksum  # noqa: E402

# The demo (nano Swin, mnist5k) shrunk to a few seconds: a smaller Swin, 100 val images, 2 batches per epoch.
TINY = ["model.kwargs.patch_size=4", "model.kwargs.embed_dim=8", "model.kwargs.depths=[1,1,1,1]",
        "model.kwargs.num_heads=[1,1,1,1]", "data.val_size=100", "train.batch_size=16", "train.eval_batch_size=50",
        "train.max_steps_per_epoch=2", "pretrain.epochs=0", "train.validate_dense=false", "logger=none"]


def compose_train(out, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cache = Path(out).parent / "cache"
        return compose("train", overrides=[f"output_dir={out}", f"paths.cache_dir={cache}", *TINY, *overrides])


def run(out, *overrides):
    return train.run(compose_train(out, *overrides))


def weights(out):
    return load_file(str(Path(out) / "model.safetensors"))


def interrupt_after_checkpoints(monkeypatch, n):
    """Simulate a kill right after the n-th checkpoint is written."""
    real, calls = finetune_mod.save_checkpoint, []

    def save(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(finetune_mod, "save_checkpoint", save)


def test_finetune_writes_everything_and_keeps_pruned_weights_exactly_zero(tmp_path):
    out = tmp_path / "run"
    s = run(out, "train.epochs=2", "train.weight_decay=0.5", "prune.ratio=0.55")  # strong decay: must not regrow
    assert s["epochs"] == 2 and s["world_size"] == 1 and s["global_batch"] == 16 and s["val_images"] == 100
    for key in ("top1", "top5", "pruned_top1", "pruned_top5", "best_top1", "params_nonzero", "flops_paper",
                "git_commit", "wall_time_s", "seed", "config"):
        assert s.get(key) is not None, key
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and {"train_loss", "lr", "top1", "top5", "time"} <= set(log[0])
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.pt", "prev.pt", "best.pt"}
    sd, masks = weights(out), load_file(str(out / "masks.safetensors"))
    assert mask_checksum(masks) == s["mask_checksum"]
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == s["prunable_removed"] and abs(removed / sum(m.numel() for m in masks.values()) - 0.55) < 1e-3
    for name, m in masks.items():
        assert torch.all(sd[name][~m] == 0), name
    assert json.loads((out / "summary.json").read_text())["top1"] == s["top1"]


def test_epochs_0_prunes_and_evaluates_only(tmp_path):
    s = run(tmp_path, "train.epochs=0", "train.validate_dense=true")
    assert s["epochs"] == 0 and s["top1"] == s["pruned_top1"] and s["dense_top1"] is not None
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "checkpoints").exists()


def test_dense_pretraining_is_cached(tmp_path, capsys):
    first = run(tmp_path / "a", "train.epochs=0", "pretrain.epochs=1")
    assert "pretraining the dense model" in capsys.readouterr().out
    second = run(tmp_path / "b", "train.epochs=0", "pretrain.epochs=1")
    assert "from the pretraining cache" in capsys.readouterr().out
    assert second["dense_top1"] == first["dense_top1"] and second["top1"] == first["top1"]
    assert len(list((tmp_path / "cache" / "pretrain").glob("*.pt"))) == 1


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run(straight, "train.epochs=2")
    resumed = tmp_path / "resumed"
    interrupt_after_checkpoints(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(resumed, "train.epochs=2")
    assert not (resumed / "summary.json").exists()
    monkeypatch.undo()
    s = run(resumed, "train.epochs=2")  # the same command again
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert s["top1"] == json.loads((straight / "summary.json").read_text())["top1"]


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run(straight, "train.epochs=2")
    interrupt_after_checkpoints(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(broken, "train.epochs=2")
    monkeypatch.undo()
    (broken / "checkpoints" / "last.pt").write_bytes(b"torn")
    run(broken, "train.epochs=2")
    assert "last.pt is unreadable, falling back to the previous checkpoint" in capsys.readouterr().out
    a, b = weights(straight), weights(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)


class NaNAfter(torch.nn.Module):
    """Cross-entropy that turns NaN from the `after`-th call on."""

    def __init__(self, after):
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, logits, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss * float("nan") if self.calls > self.after else loss


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss_stops_keeping_the_last_good_checkpoint_or_skips(tmp_path, monkeypatch, capsys, mode):
    monkeypatch.setattr(finetune_mod, "build_mixup_and_loss", lambda cfg, n: (None, NaNAfter(2)))  # epoch 1: NaN
    if mode == "stop":
        with pytest.raises(SystemExit) as e:
            run(tmp_path, "train.epochs=2")
        assert e.value.code == 2 and "train.nonfinite=skip" in capsys.readouterr().err
        assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 0
        assert not (tmp_path / "summary.json").exists()
    else:
        run(tmp_path, "train.epochs=2", "train.nonfinite=skip")
        log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
        assert [r["skipped_steps"] for r in log] == [0, 2]


@pytest.mark.parametrize("overrides, match", [
    (["train.batch_size=0"], "train.batch_size=0"),
    (["train.global_batch=15", "train.accum_steps=2"], "train.global_batch=15"),
    (["train.nonfinite=ignore"], "train.nonfinite"),
    (["train.amp=fp8"], "train.amp"),
    (["prune.ratio=1.5"], "prune.ratio"),
])
def test_bad_config_exits_with_one_sentence_before_writing(tmp_path, capsys, overrides, match):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run(out, *overrides)
    assert e.value.code == 2 and match in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_refuses_an_output_dir_holding_a_finished_run_of_another_config(tmp_path, capsys):
    run(tmp_path, "train.epochs=0")
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(SystemExit):
        run(tmp_path, "train.epochs=0", "prune.ratio=0.3")
    assert "different config" in capsys.readouterr().err
    assert (tmp_path / "summary.json").read_text() == before


def test_wandb_offline_run_holds_the_table1_row(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    s = run(tmp_path, "train.epochs=1", "logger=wandb", "prune.ratio=0.55")  # DIMAP3, whatever the demo prunes
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].glob("files/media/table/table1_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    row = dict(zip(table["columns"], table["data"][0]))
    assert row["variant"] == "DIMAP3" and row["top1"] == pytest.approx(s["top1"])
    assert row["params_m"] == pytest.approx(s["params_nonzero"] / 1e6)


def test_recipe_switches_run_together_and_keep_the_mask(tmp_path):
    """EMA (evaluated and saved), Mixup/CutMix with smoothing, accumulation, channels_last, per-epoch schedule."""
    s = run(tmp_path, "train.epochs=1", "train.ema=true", "train.ema_decay=0.5", "train.mixup=0.8", "train.cutmix=1.0",
            "train.smoothing=0.1", "train.accum_steps=2", "train.channels_last=true", "train.sched_on_updates=false")
    assert s["global_batch"] == 32
    sd, masks = weights(tmp_path), load_file(str(tmp_path / "masks.safetensors"))
    assert all(torch.all(sd[n][~m] == 0) for n, m in masks.items())
    ema = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["ema"]
    assert all(torch.equal(sd[k], ema[k]) for k in sd)  # the EMA weights are the ones evaluated and saved


def test_finetunes_a_nano_vit_on_the_demo_data(tmp_path):
    """A non-Swin family through the same train.py: prune, one short epoch with the mask fixed, evaluate."""
    out = tmp_path / "vit"
    vit = [f"output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", "model=vit_nano", "model.kwargs.embed_dim=16",
           "model.kwargs.depth=2", "model.kwargs.num_heads=2", *TINY[4:]]  # TINY[4:]: the data/train/logger shrink
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        s = train.run(compose("train", overrides=[*vit, "train.epochs=1", "prune.ratio=0.55"]))
    assert s["model"] == "vit_small_patch16_224" and s["epochs"] == 1 and s["val_images"] == 100
    assert [sum(l["module"] == m for l in s["layers"]) for m in ("QKV-M", "PRJ-M", "MLP-M")] == [2, 2, 4]
    sd, masks = weights(out), load_file(str(out / "masks.safetensors"))
    assert mask_checksum(masks) == s["mask_checksum"] and set(masks) == {l["name"] for l in s["layers"]}
    for name, m in masks.items():
        assert torch.all(sd[name][~m] == 0) and torch.all(sd[name][m] != 0), name
