"""One writer per output folder (dimap.training.cluster): the lock, its refusal sentence, stale locks, and the
folder left as it was by a refused run."""
import os
import socket
import sys
from pathlib import Path

import pytest

from dimap.training.cluster import LOCK, OutputLock

ROOT = Path(__file__).resolve().parents[2]


def test_a_held_lock_names_its_holder_and_is_released_with_its_file(tmp_path):
    first, second = OutputLock(tmp_path), OutputLock(tmp_path)
    assert first.acquire() is None
    assert second.acquire() == f"host {socket.gethostname()}, pid {os.getpid()}"
    first.release()
    assert not (tmp_path / LOCK).exists()
    assert second.acquire() is None  # free again
    second.release()


def test_a_stale_lock_file_of_a_killed_run_does_not_block(tmp_path):
    (tmp_path / LOCK).write_text("host elsewhere, pid 99999")  # what kill -9 leaves: the file, no OS lock
    lock = OutputLock(tmp_path)
    assert lock.acquire() is None
    assert (tmp_path / LOCK).read_text() == f"host {socket.gethostname()}, pid {os.getpid()}"
    lock.release()


def test_a_folder_made_for_the_lock_is_removed_again_when_left_empty(tmp_path):
    lock = OutputLock(tmp_path / "new")
    assert lock.acquire() is None
    lock.release()
    assert not (tmp_path / "new").exists()


def test_train_refuses_a_folder_another_run_is_writing_in_one_sentence(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from tests.test_train_cli import run
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    other = OutputLock(out)
    assert other.acquire() is None  # the running one
    with pytest.raises(SystemExit) as e:
        run(out, "train.epochs=1")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert f"is being written by another run (host {socket.gethostname()}, pid {os.getpid()}" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK, "notes.txt"]  # nothing of the refused run
    assert (out / LOCK).read_text() == f"host {socket.gethostname()}, pid {os.getpid()}"  # the holder's, kept
    other.release()


SLURM_TASK = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
              "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_PROCID": "11", "SLURM_LOCALID": "3"}
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_a_slurm_task_of_submitit_gets_torchruns_variables_from_its_allocation(monkeypatch):
    from dimap.training.distributed import env_from_submitit
    for key in TORCHRUN_VARS:  # set first, so that monkeypatch restores them (unset) after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    for key, value in SLURM_TASK.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    assert env_from_submitit()
    assert {k: os.environ[k] for k in TORCHRUN_VARS[:5]} == {
        "RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "gpu07"}
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000  # the same on every task: drawn from the job id
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"  # LOCAL_RANK picks the GPU, as under torchrun


def test_torchrun_started_inside_a_submitit_job_keeps_its_own_variables(monkeypatch):
    """A user's sbatch script runs torchrun in a submitit task: each worker is a rank of torchrun's world, which
    the job's variables (one task, rank 0 of 1) must not overwrite."""
    from dimap.training.distributed import env_from_submitit
    torchrun = {"TORCHELASTIC_RUN_ID": "1", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5",
                "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for key, value in {**SLURM_TASK, "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                       **torchrun}.items():
        monkeypatch.setenv(key, value)
    assert not env_from_submitit()
    assert {k: os.environ[k] for k in torchrun} == torchrun


def test_outside_submitit_torchruns_own_variables_are_left_alone(monkeypatch):
    from dimap.training.distributed import env_from_submitit
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "")
    monkeypatch.setenv("RANK", "5")
    assert not env_from_submitit() and os.environ["RANK"] == "5"


def test_a_finished_run_is_skipped_without_touching_its_files(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from tests.test_train_cli import run
    first = run(tmp_path, "train.epochs=1")
    stamp = (tmp_path / "model.safetensors").stat().st_mtime_ns
    assert run(tmp_path, "train.epochs=1") == first
    assert f"{tmp_path}/summary.json is finished" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").stat().st_mtime_ns == stamp


def _agree(rank, world, init_file, results):
    import signal as sig
    import torch.distributed as dist
    from dimap.training.cluster import Preemption
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    with Preemption() as preemption:
        before = preemption.requested()
        if rank == 1:
            os.kill(os.getpid(), sig.SIGUSR1)  # Slurm may reach one task before the others
        after = preemption.requested()
    results[rank] = (before, after)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_signal_caught_by_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    import signal as sig
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_agree, args=(2, tmp_path / "init", results), nprocs=2)
    assert dict(results) == {0: (0, sig.SIGUSR1), 1: (0, sig.SIGUSR1)}


def _rank0_lock_fails(rank, world, init_file, out, flock_errno, results):
    """hold_output_dir on two gloo ranks where rank 0's flock raises `flock_errno`; then one more collective, as
    train.py's next step makes. A short gloo timeout turns a rank left waiting into an error instead of a hang."""
    import datetime
    import fcntl
    import torch.distributed as dist
    from dimap.training.cluster import hold_output_dir

    def flock(fd, op):
        raise OSError(flock_errno, os.strerror(flock_errno))

    fcntl.flock = flock
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    try:
        with hold_output_dir(out, rank == 0):
            dist.barrier()
        results[rank] = ("ran", "")
    except Exception as e:
        results[rank] = (type(e).__name__, str(e))
    dist.destroy_process_group()


@pytest.mark.parametrize("flock_errno, outcome", [(5, "UserError"), (38, "ran")])  # EIO; ENOSYS (no locks there)
def test_a_lock_file_error_on_rank_0_ends_every_rank_together_or_none(tmp_path, flock_errno, outcome):
    """Rank 0 alone touches the lock. Before: its OSError left rank 1 waiting in the broadcast until the timeout
    (30 min under NCCL, where no torchrun stops it: Slurm tasks of submitit). A filesystem without locks (Lustre
    without -o flock) is a warning, not a failure."""
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_rank0_lock_fails, args=(2, tmp_path / "init", tmp_path / "out", flock_errno, results), nprocs=2)
    assert results[0] == results[1] and results[0][0] == outcome
    if outcome == "UserError":
        assert results[0][1].startswith(f"cannot create the lock file {tmp_path / 'out' / LOCK}")
    else:  # the run went on unguarded and left no lock file that would name nobody
        assert not (tmp_path / "out" / LOCK).exists()


def test_a_checkpoint_that_cannot_be_written_ends_the_run_in_one_sentence(tmp_path, capsys, monkeypatch):
    """A full disk (ENOSPC) under rank 0's checkpoint: one sentence and exit 2 on every rank (shared through
    on_main_shared), not a traceback on rank 0 alone while the others wait at the next collective."""
    sys.path.insert(0, str(ROOT))
    from dimap.training import finetune
    from tests.test_train_cli import run

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(finetune, "save_checkpoint", full_disk)
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "run", "train.epochs=1")
    err = capsys.readouterr().err.strip()  # the progress bars' lines, then the sentence
    assert e.value.code == 2 and "Traceback" not in err
    assert "(No space left on device): free space there" in err.splitlines()[-1]


def _poll(rank, world, init_file, results):
    import signal as sig
    import torch.distributed as dist
    from dimap.training.cluster import Preemption
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    with Preemption() as preemption:
        answers = [preemption.poll()]
        if rank == 1:
            os.kill(os.getpid(), sig.SIGUSR1)  # between two updates, on one rank only
        answers += [preemption.poll(), preemption.poll(), preemption.requested()]
        # a rank past data.max_bad_images: BAD_DATA, above any signal, on every rank one poll late (or at once)
        answers += [preemption.poll(bad_data=rank == 1), preemption.poll(), preemption.requested(bad_data=rank == 0)]
    results[rank] = answers
    dist.destroy_process_group()


@pytest.mark.slow
def test_poll_gives_every_rank_the_same_answer_at_the_same_update_one_update_late(tmp_path):
    import signal as sig
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_poll, args=(2, tmp_path / "init", results), nprocs=2)
    from dimap.training.cluster import Preemption
    bad = Preemption.BAD_DATA
    assert dict(results) == {r: [0, 0, sig.SIGUSR1, sig.SIGUSR1, 0, bad, bad] for r in (0, 1)}


def test_a_forked_child_such_as_a_dataloader_worker_does_not_keep_the_lock(tmp_path):
    """After kill -9 of the run, its orphaned DataLoader workers live on for seconds: they must not hold the lock
    that the resumed run (the same command, requeued at once) needs. Before: the resume was refused."""
    import signal as sig
    lock = OutputLock(tmp_path)
    assert lock.acquire() is None
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: outlives its parent's lock for a while
        import time
        os.write(ready_w, b"1")  # started (fork's child hooks have run)
        time.sleep(30)
        os._exit(0)
    try:
        os.read(ready_r, 1)
        os.close(lock.fd)  # the parent dies without releasing it (kill -9)
        assert OutputLock(tmp_path).acquire() is None  # the next run gets the lock while the child still lives
    finally:
        os.kill(child, sig.SIGKILL)
        os.waitpid(child, 0)


def _leave_after_requeue(rank, world, init_file, results):
    """Preemption.exit on two gloo ranks, each with a stand-in for submitit's SIGUSR2 handler; rank 0's takes 1.5 s
    to requeue (scontrol requeue on a busy controller), then exits as submitit's does."""
    import signal as sig
    import time
    import torch.distributed as dist
    from dimap.training.cluster import Preemption

    def checkpoint_and_try_requeue(signum, frame):  # the name Preemption.exit looks for
        time.sleep(1.5)
        results[f"requeued {rank}"] = time.time()
        raise SystemExit(-1)

    sig.signal(sig.SIGUSR2, checkpoint_and_try_requeue)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    with Preemption() as preemption:
        try:
            preemption.exit(sig.SIGUSR2)
        except SystemExit as e:
            results[rank] = (e.code, time.time())
    dist.destroy_process_group()


@pytest.mark.slow
def test_after_a_preemption_the_other_ranks_leave_only_once_rank_0_has_requeued(tmp_path):
    """Under srun --kill-on-bad-exit the first rank to exit non-zero ends the job: had rank 1 left at once, rank 0
    would have been killed inside `scontrol requeue` and the job never resumed."""
    import signal as sig
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_leave_after_requeue, args=(2, tmp_path / "init", results), nprocs=2)
    assert "requeued 1" not in results  # only rank 0 requeues
    assert results[0][0] == -1 and results[1][0] == 128 + sig.SIGUSR2
    assert results[1][1] >= results["requeued 0"]
