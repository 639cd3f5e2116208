"""A failure on one rank ends every rank within seconds, with the failed rank's error, also where nothing outside
the processes stops them: two gloo ranks started by hand, as srun without --kill-on-bad-exit (or submitit) starts
them. The process group's timeout is cut to 90 s here, only so that a broken fix fails the test instead of hanging
it for 30 minutes."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_train_cli import TINY

ROOT = Path(__file__).resolve().parents[1]

# Each rank runs train.main() (as `python train.py ARGS`) with one planted failure, chosen by DIMAP_TEST_FAIL.
DRIVER = """
import datetime, os, sys
import torch, torch.distributed as dist
sys.path.insert(0, {root!r})
real_init = dist.init_process_group
dist.init_process_group = lambda *a, **k: real_init(*a, **{{**k, "timeout": datetime.timedelta(seconds=90)}})
rank, fail = int(os.environ["RANK"]), os.environ["DIMAP_TEST_FAIL"]
from dimap.training import finetune
if fail == "oom_rank1":  # rank 1 runs out of GPU memory in its third forward pass
    calls = []
    def loss(logits, target):
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.nn.functional.cross_entropy(logits, target)
    finetune.build_mixup_and_loss = lambda cfg, n: (None, loss)
if fail == "wandb_rank0":  # wandb.init fails on rank 0 (the only rank that calls it)
    import wandb
    def broken(*a, **k):
        raise wandb.errors.CommError("failed to reach api.wandb.ai")
    wandb.init = broken
sys.argv = ["train.py", *sys.argv[1:]]
import train
try:
    train.main()
finally:
    if fail == "oom_rank1" and rank == 1:
        # Keep the failed process, and its sockets, alive a while: the peers of a CUDA rank use NCCL, which does
        # not notice a dead peer, while gloo would see the closed connection and end rank 0 by itself
        import time
        time.sleep(45)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, fail, *overrides):
    """Two ranks as srun starts them: each its own process with RANK/WORLD_SIZE/MASTER_*; nothing stops the
    survivors. Returns [(returncode, stderr, exit time)] in rank order."""
    port, procs = free_port(), []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DIMAP_TEST_FAIL": fail,
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
        env.pop("TORCHELASTIC_RUN_ID", None)
        args = [o for o in TINY if o != "logger=none"] + [
            "device=cpu", f"output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides]
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER.format(root=str(ROOT)), *args], cwd=tmp_path,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    ended = [None, None]
    deadline = time.time() + 240
    while None in ended and time.time() < deadline:
        for i, p in enumerate(procs):
            if ended[i] is None and p.poll() is not None:
                ended[i] = time.time()
        time.sleep(0.05)
    out = []
    for i, p in enumerate(procs):
        if p.poll() is None:
            p.kill()
        _, err = p.communicate()
        out.append((p.returncode, err, ended[i]))
    return out


@pytest.mark.slow
def test_an_oom_on_rank_1_mid_training_ends_rank_0_within_seconds_with_rank_1s_error(tmp_path):
    (rc0, err0, t0), (rc1, err1, t1) = launch(tmp_path, "oom_rank1", "train.epochs=2", "train.max_steps_per_epoch=4",
                                              "logger=none")
    assert rc1 != 0 and "OutOfMemoryError" in err1
    assert t0 is not None and rc0 != 0, "rank 0 never ended"
    # rank 1 lingers 45 s after its failure with its connections open (as NCCL peers see it): rank 0 must not wait
    assert t0 < t1 - 25, f"rank 0 ended {t1 - t0:.0f} s before rank 1's process, not within seconds: {err0[-1500:]}"
    assert "rank 1 failed (OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB)" in err0, err0[-1500:]


@pytest.mark.slow
def test_wandb_init_failing_on_rank_0_ends_both_ranks_at_once_in_one_sentence(tmp_path):
    (rc0, err0, t0), (rc1, err1, t1) = launch(tmp_path, "wandb_rank0", "train.epochs=1", "logger=wandb")
    assert rc0 == 2 and rc1 == 2, (err0[-1500:], err1[-1500:])
    for err in (err0, err1):  # the same sentence on both ranks, no traceback
        assert "Traceback" not in err, err[-1500:]
        assert "error: wandb.init failed (CommError: failed to reach api.wandb.ai): check logger.project" in err
    assert abs(t0 - t1) < 10
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_what_counts_as_a_failure_to_announce():
    from dimap.training.rank_failure import FailTogether, is_failure
    assert is_failure(RuntimeError("x")) and is_failure(KeyboardInterrupt()) and is_failure(SystemExit(2))
    assert not is_failure(None) and not is_failure(SystemExit(0)) and not is_failure(SystemExit(None))
    assert not is_failure(SystemExit(128 + 15)) and not is_failure(SystemExit(128 + 12))  # preemption: requeued
    with FailTogether() as watch:  # no process group: nothing to watch, nothing started
        assert watch.thread is None
