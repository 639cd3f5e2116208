"""What a cluster user's log shows: where stderr is not a terminal (a Slurm task's .err file), a plain line every
train.log_interval steps (step, loss, lr, images/s, ETA) and no tqdm redraws; the bar on a terminal."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dimap.training import progress
from dimap.training.engine import train_one_epoch
from tests.test_train_cli import TINY

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^train 0 \[(\d+)/(\d+)\]  loss (\d+\.\d{4})  lr (\S+)  (\d+) images/s  ETA \d+:\d\d:\d\d$")


def loader(n=7, batch=2):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 12, generator=g), torch.randint(0, 5, (batch,), generator=g)) for _ in range(n)]


class Losses(torch.nn.Module):
    """Cross-entropy that remembers every loss it returned."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, logits, y):
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.seen.append(loss.item())
        return loss


def test_a_line_every_log_interval_steps_with_that_steps_loss_and_lr(capsys, monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    model, losses = torch.nn.Linear(12, 5), Losses()
    opt = torch.optim.SGD(model.parameters(), lr=0.25)
    train_one_epoch(model, losses, loader(), opt, torch.device("cpu"), 0, progress=True, log_interval=3)
    out, err = capsys.readouterr()
    lines = [LINE.match(line) for line in out.splitlines()]
    assert all(lines) and [(m[1], m[2]) for m in lines] == [("3", "7"), ("6", "7"), ("7", "7")]  # and the last
    assert [float(m[3]) for m in lines] == [round(losses.seen[i], 4) for i in (2, 5, 6)]
    assert {m[4] for m in lines} == {"2.50e-01"} and all(int(m[5]) > 0 for m in lines)
    assert "\r" not in err and err == ""


def test_no_line_off_rank_0_or_with_log_interval_0(capsys, monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    model = torch.nn.Linear(12, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.25)
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), loader(), opt, torch.device("cpu"), 0, progress=False)
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), loader(), opt, torch.device("cpu"), 0, log_interval=0)
    assert capsys.readouterr() == ("", "")


@pytest.mark.slow
def test_train_py_with_stderr_in_a_file_logs_lines_and_no_redraws(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    with open(tmp_path / "err.txt", "w") as err, open(tmp_path / "out.txt", "w") as out:
        r = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "train.epochs=1",
                            "train.max_steps_per_epoch=6", "train.log_interval=2", f"output_dir={tmp_path / 'run'}",
                            f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, env=env, stdout=out, stderr=err,
                           timeout=300)
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert r.returncode == 0, stderr[-2000:]
    assert "\r" not in stderr and "it/s" not in stderr  # no tqdm at all, training or evaluation
    steps = [(m[1], m[2]) for m in map(LINE.match, stdout.splitlines()) if m]
    assert steps == [("2", "6"), ("4", "6"), ("6", "6")], stdout[-2000:]
