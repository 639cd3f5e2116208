"""gpu_check's end-to-end step: `torchrun --nproc_per_node=1 train.py` on the generated image folder, killed with
SIGKILL (torchrun and every process below it, as a lost node would be) right after its first checkpoint, then
the same command again, which must resume after epoch 0 and finish epoch 1. Writes train_e2e.json."""
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from gpu_check import ROOT, TORCHRUN, StepFailed, kill_tree


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train_e2e(check, name: str, timeout: float, folder: Path, overrides: list[str]) -> dict:
    d = check.steps_dir / name
    d.mkdir(exist_ok=True)
    run_dir = check.work / "train_run"
    argv = TORCHRUN + [str(ROOT / "train.py"), *overrides, f"data.root={folder}", f"output_dir={run_dir}",
                       f"paths.cache_dir={check.work / 'cache'}"]
    t_end = time.monotonic() + timeout
    logs = [d / "first_run.log", d / "resumed_run.log"]

    # 1. the first run, killed once checkpoints/last.pt exists (it is renamed into place whole, never torn)
    t0 = time.monotonic()
    with open(logs[0], "w") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=check.env)
        while proc.poll() is None and not (run_dir / "checkpoints" / "last.pt").exists():
            if time.monotonic() > t_end:
                kill_tree(proc)
                raise StepFailed("the first run wrote no checkpoint within the step's time")
            time.sleep(0.05)
        killed = proc.poll() is None
        if killed:
            kill_tree(proc)
    if not killed:
        raise StepFailed(f"the first run ended (exit status {proc.returncode}) before writing a checkpoint")
    # what the kill left: the checkpoint is the truth (log.jsonl is written just after it, and may be missing)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    first = {"seconds": time.monotonic() - t0, "returncode": proc.returncode, "killed": killed,
             "checkpoint_epoch_at_kill": ckpt["epoch"], "history_at_kill": json.loads(json.dumps(ckpt["history"])),
             "log_rows_at_kill": read_rows(run_dir / "log.jsonl"),
             "summary_existed_at_kill": (run_dir / "summary.json").exists()}
    del ckpt

    # 2. the same command: resumes from last.pt
    t0 = time.monotonic()
    with open(logs[1], "w") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=check.env)
        try:
            rc = proc.wait(timeout=max(1.0, t_end - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            rc = 124
    resumed_log = logs[1].read_text(errors="replace")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    rows = read_rows(run_dir / "log.jsonl")
    nccl_lines = sum(log.read_text(errors="replace").count("NCCL INFO") for log in logs)
    checks = {
        "first_run_killed_after_exactly_one_epoch": first["checkpoint_epoch_at_kill"] == 0
        and [r["epoch"] for r in first["history_at_kill"]] == [0] and not first["summary_existed_at_kill"],
        "resumed_run_exit_0": rc == 0,
        "resumed_run_says_it_resumed": "resuming" in resumed_log.lower(),
        "epoch_0_not_redone": bool(rows) and rows[0] == first["history_at_kill"][0],
        "finished_two_epochs": [r["epoch"] for r in rows] == [0, 1] and summary.get("epochs") == 2,
        "world_size_1": summary.get("world_size") == 1,
        "finite_top1": isinstance(summary.get("top1"), (int, float)) and summary["top1"] == summary["top1"],
    }
    if check.mode == "gpu":  # on one GPU only a process group made for WORLD_SIZE=1 sends collectives through NCCL
        checks["nccl_communicator_created"] = nccl_lines > 0
    result = {
        "benchmark": "train_e2e", "command": "torchrun " + shlex.join(argv[3:]).replace(f"{ROOT}/", ""),
        "overrides": overrides, "environment": check.summary["environment"], "first_run": first,
        "resumed_run": {"seconds": time.monotonic() - t0, "returncode": rc}, "log_rows": rows,
        "epoch_seconds": [r.get("time") for r in rows], "nccl_info_lines": nccl_lines,
        "summary": {k: summary.get(k) for k in ("top1", "top5", "pruned_top1", "pruned_top5", "best_top1", "epochs",
                                                "world_size", "global_batch", "val_images", "train_time_s",
                                                "wall_time_s", "mask_checksum", "git_commit")},
        "checks": checks,
    }
    sys.path.insert(0, str(ROOT))
    from dimap.provenance import portable  # paths relative to the clone, $TMPDIR for the work folder
    (d / "train_e2e.json").write_text(json.dumps(portable(result, ROOT), indent=2, default=str) + "\n")
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        raise StepFailed("check(s) failed: " + ", ".join(failed))
    return {"checks": checks}
