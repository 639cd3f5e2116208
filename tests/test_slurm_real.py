"""The Slurm path on a real scheduler: `python train.py -m hydra/launcher=slurm ...` as a user types it, against a
Slurm whose node is this host (`sudo scripts/slurm_local.sh up`; .ci/run starts it). Skipped, with the reason,
where none is reachable. Each sweep point is an sbatch job of two gloo tasks on the CPU, bound to one CPU each
(TaskPlugin=task/affinity, as clusters bind them).

Three long runs go to the queue together (module fixture): an uninterrupted reference, one ended mid-epoch by
its 3-minute time limit (Slurm sends SIGUSR2 60 s before it, or up to 30 s earlier; submitit requeues the job; a
shorter limit could signal a job still importing torch on a loaded machine), and one preempted the way clusters
do it (`scancel --signal=USR2`, what Slurm sends on preemption with PreemptParameters=send_user_signal). Both
must end with the reference's weights. Once the time-limited job has resumed mid-epoch it is given 30 minutes,
so the test waits for one such round, not one every 3 minutes. These tests take minutes, not seconds."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_cli import TINY

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore"}
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=2",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "device=cpu", "logger=none"]
# The nano demo Swin for 4 epochs of 150 steps: long enough (minutes, with three jobs sharing the CPUs) that the
# time limit's signal lands mid-training. num_workers=0: a mid-epoch resume is bit-exact without workers.
LONG = ["data.val_size=100", "train.batch_size=16", "train.eval_batch_size=50", "pretrain.epochs=0",
        "train.validate_dense=false", "data.num_workers=0", "train.epochs=4", "train.max_steps_per_epoch=150"]
RESUMED = re.compile(r"resuming epoch (\d+) at step (\d+)")


def slurm_missing() -> str | None:
    """Why no test can run here, or None: Slurm answers and one of its idle nodes is this host (the tests share
    files with the jobs through this machine's disk)."""
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return "no Slurm here (no sinfo): `sudo scripts/slurm_local.sh up` starts a single-node one"
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30)
    nodes = dict(line.split()[:2] for line in r.stdout.splitlines() if len(line.split()) >= 2)
    state = nodes.get(socket.gethostname().split(".")[0], "")
    if r.returncode or not state.rstrip("*~#").startswith(("idle", "mix")):
        return f"no idle Slurm node on this host (sinfo: {(r.stdout or r.stderr).strip()[:200] or 'no answer'})"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(slurm_missing() is not None,
                                                                      reason=str(slurm_missing()))]


def multirun(root: Path, *overrides) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *SLURM, f"paths.output_root={root}",
           f"paths.cache_dir={root / 'cache'}", f"hydra.callbacks.tables.runs={root / 'train'}",
           f"hydra.callbacks.tables.out={root / 'tables'}", *overrides]
    log = open(root / "multirun.log", "w")
    return subprocess.Popen(cmd, cwd=root, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)


def queued() -> set[str]:
    r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
    return set(r.stdout.split()) if r.returncode == 0 else set()


def finish(proc: subprocess.Popen, root: Path, timeout: float) -> str:
    """Wait for the multirun under `root`; fail (with the task logs) if it fails, or if its jobs have left the
    queue for a minute without it ending: without accounting (no sacct) submitit cannot see that a job died
    without a result (a task killed, a job not requeued) and would wait for it forever."""
    deadline, gone_since = time.time() + timeout, None
    try:
        while proc.poll() is None and time.time() < deadline:
            ids = job_ids(root)
            gone = bool(ids) and not set(ids) & queued()
            gone_since = (gone_since or time.time()) if gone else None
            if gone_since and time.time() - gone_since > 60:
                break
            time.sleep(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            subprocess.run(["scancel", *job_ids(root)], capture_output=True)
    text = (root / "multirun.log").read_text()
    assert proc.returncode == 0, text[-3000:] + task_logs(root)[-3000:]
    return text


def task_logs(root: Path, pattern: str = "*_log.*") -> str:
    """Every task's stdout/stderr of every job of the multirun under `root` (submitit's folder)."""
    return "".join(p.read_text(errors="replace") for p in sorted((root / "multirun" / "submitit").rglob(pattern)))


def run_dir(root: Path) -> Path:
    dirs = [p for p in (root / "train").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def job_ids(root: Path) -> list[str]:
    """The Slurm jobs of the multirun under `root` that ran (submitit's folder per job id: 7, or 7_0 and 7_1 for
    the points of an array)."""
    folder = root / "multirun" / "submitit"
    return sorted(p.name for p in folder.iterdir() if any(p.glob("*_log.out"))) if folder.exists() else []


def weights(out: Path) -> dict:
    return load_file(str(out / "model.safetensors"))


def preempt_when_training(root: Path, sent: dict) -> None:
    """Send the job under `root` SIGUSR2 (scancel --signal=USR2) a few seconds into its second epoch."""
    deadline = time.time() + 900
    while time.time() < deadline:
        logs = list((root / "train").glob("*/log.jsonl")) if (root / "train").exists() else []
        if logs and job_ids(root):
            time.sleep(3)
            job = job_ids(root)[0]
            sent["epochs_done"] = len(logs[0].read_text().splitlines())
            sent["rc"] = subprocess.run(["scancel", "--signal=USR2", job], capture_output=True, text=True).returncode
            sent["job"] = job
            return
        time.sleep(1)


def extend_after_a_mid_epoch_resume(root: Path, done: dict) -> None:
    """Once the job under `root`, requeued by its time limit, has resumed mid-epoch (a signal can also land at an
    epoch's end: then the next 3-minute round is awaited), give it 30 minutes (scontrol update, as root): that
    resumption is what the test shows; more rounds would only repeat it, at one per 3 minutes."""
    deadline = time.time() + 1200
    while time.time() < deadline:
        ids = job_ids(root)
        if ids and any(int(step) > 0 for _, step in RESUMED.findall(task_logs(root, "*_0_log.out"))):
            done["rc"] = subprocess.run(["scontrol", "update", f"JobId={ids[0]}", "TimeLimit=30"],
                                        capture_output=True, text=True).returncode
            return
        time.sleep(2)


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory):
    """The three long runs, queued together; {name: (root, Popen)} plus the preemption's record."""
    base = tmp_path_factory.mktemp("slurm_long")
    runs = {"reference": multirun(base / "reference", *LONG),
            "time_limit": multirun(base / "time_limit", *LONG, "hydra.launcher.timeout_min=3",
                                   "hydra.launcher.signal_delay_s=60"),
            "preempted": multirun(base / "preempted", *LONG)}
    sent: dict = {}
    watcher = threading.Thread(target=preempt_when_training, args=(base / "preempted", sent), daemon=True)
    watcher.start()
    threading.Thread(target=extend_after_a_mid_epoch_resume, args=(base / "time_limit", {}), daemon=True).start()
    yield {name: (base / name, proc) for name, proc in runs.items()} | {"sent": sent, "watcher": watcher}
    for name, proc in runs.items():
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", *job_ids(base / name)], capture_output=True)


@pytest.fixture(scope="module")
def reference(long_runs):
    root, proc = long_runs["reference"]
    finish(proc, root, timeout=1500)
    return run_dir(root)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_sweep")
    overrides = [*TINY, "train.epochs=1", "data.num_workers=2", "prune.ratio=0.15,0.55"]
    out = finish(multirun(root, *overrides), root, timeout=900)
    return root, overrides, out


def test_a_ratio_sweep_runs_each_point_as_a_job_of_two_tasks_bound_to_their_cpus(sweep):
    root, _, out = sweep
    assert len(job_ids(root)) == 2  # one sbatch job per point
    for ratio in (0.15, 0.55):
        run = root / "train" / f"swin_nano_p4_dimap_r{ratio}"
        s = json.loads((run / "summary.json").read_text())
        assert s["world_size"] == 2 and s["ratio"] == ratio and s["val_images"] == 100
        ranks = [next(run.glob(f"submitit/*_{r}_log.out")).read_text() for r in (0, 1)]
        cpus = [re.search(rf"rank {r}: 1 loader worker\(s\); CPUs (\d+): 1 bound to this task", text)
                for r, text in enumerate(ranks)]
        assert all(cpus), ranks  # data.num_workers=2 on one CPU per task: one worker
        assert cpus[0].group(1) != cpus[1].group(1)  # each task on its own CPU
        assert "capped at 1 (the 1 CPUs bound to this task)" in ranks[0]
    assert "from 2 runs" in out  # the tables rebuilt when the sweep ended


def test_a_sweep_run_again_skips_its_finished_points(sweep):
    root, overrides, _ = sweep
    stamps = {p: p.stat().st_mtime_ns for p in (root / "train").glob("*/model.safetensors")}
    shutil.rmtree(root / "multirun" / "submitit")
    finish(multirun(root, *overrides), root, timeout=600)
    assert len(stamps) == 2 and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert task_logs(root, "*_0_log.out").count("is finished") == 2


def assert_resumed_like(out: Path, reference: Path, logs: str) -> list[tuple[int, int]]:
    """The run under `out` resumed (mid-epoch at least once) and ended with the reference's weights and log."""
    resumes = [(int(e), int(s)) for e, s in RESUMED.findall(logs)]
    assert resumes and any(step > 0 for _, step in resumes), logs[-3000:]
    a, b = weights(reference), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref, got = ([json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] for d in (reference, out))
    assert [(r["epoch"], r["train_loss"]) for r in got] == [(r["epoch"], r["train_loss"]) for r in ref]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    return resumes


def test_a_time_limit_mid_epoch_requeues_the_job_which_resumes_to_the_uninterrupted_weights(long_runs, reference):
    root, proc = long_runs["time_limit"]
    finish(proc, root, timeout=1500)
    logs = task_logs(root)
    assert "caught SIGUSR2" in logs and "timed-out" in logs  # Slurm's warning signal, seen as a time limit
    assert len(job_ids(root)) == 1  # the same job, requeued, not a new submission
    assert_resumed_like(run_dir(root), reference, logs)


def test_a_preemption_signal_requeues_the_job_which_resumes_to_the_uninterrupted_weights(long_runs, reference):
    root, proc = long_runs["preempted"]
    finish(proc, root, timeout=1500)
    long_runs["watcher"].join(timeout=5)
    sent = long_runs["sent"]
    assert sent.get("rc") == 0, sent  # scancel --signal=USR2 reached the running job
    logs = task_logs(root)
    assert "caught SIGUSR2" in logs and "preempted" in logs and len(job_ids(root)) == 1
    resumes = assert_resumed_like(run_dir(root), reference, logs)
    assert resumes[0][0] >= sent["epochs_done"]  # resumed where it was stopped, after the epochs it had logged
