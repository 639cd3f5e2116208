"""Hydra's submitit launcher on CPU: `train.py -m hydra/launcher=local` runs each point of a ratio sweep as its
own submitit job of 2 tasks (gloo), each joining its process group from submitit's job environment; the tables
are rebuilt when the multirun ends, and a second identical multirun skips the finished points."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dimap.pruning.masks import mask_checksum
from tests.test_train_cli import TINY

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore"}


@pytest.mark.slow
def test_local_submitit_multirun_runs_each_ratio_as_a_world_of_two(tmp_path):
    overrides = [o for o in TINY if o != "logger=none"] + [
        "logger=wandb", "device=cpu", "train.epochs=1", f"paths.output_root={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.callbacks.tables.runs={tmp_path / 'train'}",
        f"hydra.callbacks.tables.out={tmp_path / 'tables'}"]
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2",
           *overrides, "prune.ratio=0.15,0.55"]
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for ratio in (0.15, 0.55):
        out = tmp_path / "train" / f"swin_nano_p4_dimap_r{ratio}"
        s = json.loads((out / "summary.json").read_text())
        assert s["world_size"] == 2 and s["ratio"] == ratio and s["val_images"] == 100
        masks = load_file(str(out / "masks.safetensors"))
        assert mask_checksum(masks) == s["mask_checksum"]
        assert sum(int((~m).sum()) for m in masks.values()) == s["prunable_removed"]
        logs = sorted(p.name for p in (out / "submitit").iterdir())  # both tasks' logs, linked into the run
        assert len(logs) == 4 and all((out / "submitit" / n).is_symlink() for n in logs)
        rank0 = next(out.glob("submitit/*_0_log.out")).read_text()
        assert f"masks identical on 2 rank(s): checksum {s['mask_checksum']}" in rank0
        assert rank0.count("wrote ") == 1 and next(out.glob("submitit/*_1_log.out")).read_text().count("wrote ") == 0
        assert len(list((out / "wandb").glob("offline-run-*"))) == 1 and not (out / ".lock").exists()
    assert {p.name for p in (tmp_path / "tables").iterdir()} >= {"table1.md", "table3.tex"}
    assert "from 2 runs" in r.stdout + r.stderr

    weights = (tmp_path / "train" / "swin_nano_p4_dimap_r0.15" / "model.safetensors").stat().st_mtime_ns
    again = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "train" / "swin_nano_p4_dimap_r0.15" / "model.safetensors").stat().st_mtime_ns == weights
    logs = "".join(p.read_text() for p in (tmp_path / "multirun" / "submitit").rglob("*_0_log.out"))
    assert logs.count("is finished") == 2


def test_the_slurm_launcher_gives_srun_tasks_their_cpus_and_ends_every_rank_when_one_fails():
    """srun of Slurm 22.05-23.02 does not pass sbatch's --cpus-per-task on (SRUN_CPUS_PER_TASK does), and only
    --kill-on-bad-exit (SLURM_KILL_BAD_EXIT) makes a failing rank end the others; both in the sbatch script."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=12"],
                      return_hydra_config=True)
    setup = OmegaConf.to_container(cfg.hydra.launcher.setup, resolve=True)
    assert setup == ["export SRUN_CPUS_PER_TASK=12", "export SLURM_KILL_BAD_EXIT=1"]
