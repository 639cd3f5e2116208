"""The tables a sweep leaves: built from the runs that sweep wrote, put where it says, and the repository's
results/tables left alone when the sweep wrote elsewhere (paths.output_root=...)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train_cli import TINY

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore"}


@pytest.mark.slow
def test_a_sweep_into_another_folder_tables_its_own_runs_there(tmp_path):
    repo_tables = {p: p.stat().st_mtime_ns for p in (ROOT / "results" / "tables").glob("*")}
    (tmp_path / "multirun").mkdir()
    (tmp_path / "multirun" / "runs.txt").write_text(f"{ROOT / 'results' / 'runs'}\n")  # a previous sweep's note
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *TINY, "device=cpu", "train.epochs=0",
           f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", "prune.ratio=0.15,0.55"]
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"to {tmp_path / 'multirun' / 'tables'} from 2 runs under {tmp_path / 'train'}" in r.stdout, r.stdout[-2000:]
    assert {p.name for p in (tmp_path / "multirun" / "tables").iterdir()} >= {"table1.md", "table3.tex"}
    assert sorted((tmp_path / "multirun" / "runs.txt").read_text().split()) == [
        str(tmp_path / "train" / f"swin_nano_p4_dimap_r{r}") for r in (0.15, 0.55)]
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "results" / "tables").glob("*")} == repo_tables
