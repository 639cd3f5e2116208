"""The failure catalogue: a real kill -9 and resume, and every mistake a user can make, refused in one sentence.

Each refusal must exit with status 2, name the fix, print no traceback, and leave the output folder as it was.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_tiny_swin
from hydra import compose, initialize_config_dir

from tests.test_train_cli import TINY

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
# Long enough epochs that a kill right after the first checkpoint lands inside the second epoch; two worker
# processes do the random crops, so resuming must reproduce their random streams too.
KILLABLE = [o for o in TINY if not o.startswith("train.max_steps_per_epoch")] + [
    "train.max_steps_per_epoch=40", "train.epochs=3", "data.num_workers=2"]


def train_cli(out, *overrides):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), f"output_dir={out}",
                             f"paths.cache_dir={Path(out).parent / 'cache'}", *overrides],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_9_after_the_first_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = train_cli(killed, *KILLABLE)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[1][-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    assert f"pid {proc.pid}" in (killed / ".lock").read_text()  # the killed run's lock file is left behind...
    epoch_at_kill = torch.load(last, weights_only=False, map_location="cpu")["epoch"]
    assert epoch_at_kill < 2  # killed before the end

    resumed = train_cli(killed, *KILLABLE)  # the same command again
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]  # ...and does not block the resumption
    assert "resum" in out.lower() and not (killed / ".lock").exists()
    uninterrupted = train_cli(straight, *KILLABLE)
    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err[-2000:]

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    assert (sa["top1"], sa["mask_checksum"]) == (sb["top1"], sb["mask_checksum"])
    log = [json.loads(l) for l in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]  # no epoch counted twice


@pytest.mark.slow
def test_a_second_run_into_a_busy_output_dir_is_refused_at_once_while_the_first_goes_on(tmp_path):
    out = tmp_path / "run"
    longer = [o for o in KILLABLE if not o.startswith("train.epochs")] + ["train.epochs=50"]
    first = train_cli(out, *longer)
    try:
        deadline = time.time() + 240
        while not (out / ".lock").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        second = train_cli(out, *longer)  # the same command pasted twice
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2 and "Traceback" not in err, err[-2000:]
        assert len(err.strip().splitlines()) == 1
        assert f"another run (host {socket.gethostname()}, pid {first.pid};" in err
        assert first.poll() is None, "the first run stopped"
        assert (out / ".lock").read_text() == f"host {socket.gethostname()}, pid {first.pid}"
        while not (out / "log.jsonl").exists() and first.poll() is None:  # and it goes on writing its epochs
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1][-2000:]
    finally:
        first.kill()
        first.wait()


def image_folder(root: Path, empty_class: bool = False, with_val: bool = True) -> Path:
    from PIL import Image
    for split in ("train", "val") if with_val else ("train",):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            if not (empty_class and split == "train" and c == "b"):
                Image.new("RGB", (8, 8)).save(d / "0.png")
    return root


def other_architecture(tmp_path):
    path = tmp_path / "swin_other.pth"
    torch.save({"model": make_tiny_swin(depths=(1, 1, 1, 1)).state_dict()}, path)
    return path


CATALOGUE = {
    "ratio_one": (lambda p: ["prune.ratio=1.0"], "prune.ratio"),
    "ratio_negative": (lambda p: ["prune.ratio=-0.2"], "prune.ratio"),
    "unknown_criterion": (lambda p: ["prune.method=taylor"], "prune.method"),
    "missing_data_folder": (lambda p: ["data=imagenet", f"data.root={p / 'nowhere'}"], "data.root"),
    "no_val_split": (lambda p: ["data=imagenet", f"data.root={image_folder(p / 'in', with_val=False)}"], "val"),
    "empty_class_folder": (lambda p: ["data=imagenet", f"data.root={image_folder(p / 'in', empty_class=True)}"],
                           "no images"),
    "hub_weights_offline": (lambda p: ["model.weights=hub", "model.hub_tag=ms_in1k"], "model.weights=PATH"),
    "weights_file_missing": (lambda p: [f"model.weights={p / 'w.pth'}"], "is not a file"),
    "weights_of_another_architecture": (lambda p: [f"model.weights={other_architecture(p)}"], "does not fit"),
    "batch_size_zero": (lambda p: ["train.batch_size=0"], "train.batch_size"),
    "global_batch_not_divisible": (lambda p: ["train.global_batch=15", "train.accum_steps=2"], "train.global_batch"),
    "odd_batch_with_mixup": (lambda p: ["train.mixup=0.8", "train.batch_size=15"], "odd"),  # timm asserts at step 1
}


def compose_train(out, *overrides):
    base = [o for o in TINY if not (o.startswith("data.") and "data=imagenet" in overrides)]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={out}", f"paths.cache_dir={Path(out).parent / 'cache'}",
                                           *base, *overrides])


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_catalogue_of_user_mistakes(tmp_path, capsys, case):
    import train
    overrides, match = CATALOGUE[case]
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        train.run(compose_train(out, *overrides(tmp_path)))
    err = capsys.readouterr().err
    assert e.value.code == 2 and match in err, err
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_finished_run_of_a_different_config_is_refused_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    summary = {"config": {"seed": 1}, "top1": 99.0}
    (out / "summary.json").write_text(json.dumps(summary))
    proc = train_cli(out, *TINY)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in err and "different config" in err
    assert json.loads((out / "summary.json").read_text()) == summary
