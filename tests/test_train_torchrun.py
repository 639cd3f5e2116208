"""train.py under torchrun with 2 CPU processes (gloo): one output folder, identical masks, every validation
image counted once, sparsity intact after training, files and the wandb run written once (by rank 0)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_cli import TINY

from dimap.pruning.masks import mask_checksum

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_share_one_run(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    overrides = [o for o in TINY if o != "logger=none"] + ["logger=wandb", "train.epochs=1", "prune.ratio=0.55",
                                                          "train.weight_decay=0.5", f"output_dir={out}"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "train.py"), *overrides], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["global_batch"] == 32
    assert s["val_images"] == 100  # 50 per rank, summed with all_reduce: each image exactly once
    assert f"masks identical on 2 rank(s): checksum {s['mask_checksum']}" in r.stdout
    assert r.stdout.count("wrote ") == 1 and r.stdout.count("epoch 0:") == 1  # rank 0 alone prints and writes
    masks, sd = load_file(str(out / "masks.safetensors")), load_file(str(out / "model.safetensors"))
    assert mask_checksum(masks) == s["mask_checksum"]
    assert all(torch.all(sd[n][~m] == 0) for n, m in masks.items())
    assert sum(int((~m).sum()) for m in masks.values()) == s["prunable_removed"]
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["world_size"] == 2
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    assert not list(out.rglob("*.tmp")) and not (out / ".hydra").exists()
