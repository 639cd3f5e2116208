"""What a run needs on a cluster: one writer per output folder, the launcher's logs kept with the run, stopping
cleanly when preempted, and the tables rebuilt when a sweep ends.

The output folder's lock is an OS lock (fcntl.flock) on output_dir/.lock held by rank 0 for the whole run: it
dies with its process, so a run killed by kill -9, an OOM or a node failure leaves no lock behind that could block
its resumption; the file also names the holder (host, pid) so that a refused run can say who is writing.
"""
import contextlib
import errno
import fcntl
import importlib.util
import os
import signal
import socket
from pathlib import Path


from hydra.experimental.callback import Callback

from dimap.errors import UserError
from dimap.training.distributed import (barrier, cpu_group, is_main, max_over_ranks, on_main_shared,
                                       start_max_over_ranks)

LOCK = ".lock"
# flock's answers on a filesystem that has no locks (Lustre mounted without -o flock, some NFS setups)
NO_LOCKS = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}
# Lock descriptors held by this process. A forked child (a DataLoader worker) inherits them, and a flock lives as
# long as any copy is open: after a kill -9 the orphaned workers, which notice their parent's death only seconds
# later, would still hold the lock and refuse the resumed run. Children close their copies at once.
_HELD: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class OutputLock:
    """An exclusive, non-blocking lock on `out_dir`; `holder` names who has it when `acquire` fails."""

    def __init__(self, out_dir: str | Path):
        self.dir, self.fd, self.created_dir = Path(out_dir), None, False

    @property
    def path(self) -> Path:
        return self.dir / LOCK

    def acquire(self) -> str | None:
        """None when the lock is ours now (or the filesystem has no locks: a warning, the run goes on unguarded),
        else 'host HOST, pid PID' of the run holding it. Any other OS error is a UserError naming the folder."""
        try:
            return self._acquire()
        except OSError as e:
            raise UserError(f"cannot create the lock file {self.path} ({e.strerror or e}): make output_dir "
                            "writable or choose another one") from None

    def _acquire(self) -> str | None:
        self.created_dir = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                return holder
            except OSError as e:
                os.close(fd)
                if e.errno not in NO_LOCKS:
                    raise
                self.path.unlink(missing_ok=True)
                print(f"warning: the filesystem of {self.dir} has no file locks ({e.strerror}): nothing stops a "
                      "second run from writing into this output_dir at the same time", flush=True)
                return None
            # the holder may have released and unlinked the file between our open and flock: lock the new one
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}".encode())
        os.fsync(fd)
        self.fd = fd
        _HELD.add(fd)
        return None

    def release(self) -> None:
        """Unlink the file (a finished run leaves none) and drop the lock; a folder this lock made, still empty,
        is removed too, so a refused run leaves things as they were."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        _HELD.discard(self.fd)
        self.fd = None
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.dir.rmdir()


@contextlib.contextmanager
def hold_output_dir(out_dir: str | Path, main: bool):
    """Rank 0 locks `out_dir` for the block; every rank refuses together (UserError) if another run holds it, or
    if rank 0 cannot create the lock file (on_main_shared: no rank is left waiting for the others)."""
    lock = OutputLock(out_dir) if main else None
    holder = on_main_shared(lock.acquire if lock else lambda: None)
    if holder is not None:
        raise UserError(f"output_dir={out_dir} is being written by another run ({holder}; lock file "
                        f"{Path(out_dir) / LOCK}): wait for it to end, stop it, or choose another output_dir")
    try:
        yield
    finally:
        if lock:
            lock.release()


def link_submitit_logs(out_dir: str | Path) -> Path | None:
    """In a submitit job, link its sbatch script and every task's stdout/stderr into output_dir/submitit/, so a
    run's folder holds its launcher logs wherever hydra.launcher.submitit_folder put them. Rank 0 calls it."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    import submitit
    from submitit.core.utils import JobPaths

    env = submitit.JobEnvironment()
    folder, dest = env.paths.folder, Path(out_dir) / "submitit"
    dest.mkdir(parents=True, exist_ok=True)
    files = [JobPaths(folder, env.job_id, t) for t in range(env.num_tasks)]
    for path in [files[0].submission_file] + [p for f in files for p in (f.stdout, f.stderr)]:
        link = dest / path.name
        if path.exists() and not link.is_symlink():
            with contextlib.suppress(OSError):
                link.symlink_to(path.resolve())
    return dest


class RegenerateTables(Callback):
    """A Hydra callback (conf/hydra/default.yaml): when a multirun ends, scripts/make_tables.py rebuilds the tables
    from the runs the sweep wrote, so a finished sweep leaves its tables without another step.

    Every job notes its output_dir in SWEEP_DIR/runs.txt when it ends (wherever it ran: a submitit task too, on
    the shared filesystem submitit needs). When all of them lie under the repository's results/runs, results/tables
    is rebuilt from all of results/runs (a paper table's rows from several sweeps); otherwise the tables of the
    runs under their common folder go to SWEEP_DIR/tables, leaving the repository's alone. `runs`/`out` fix
    either folder instead. With the submitit launcher the multirun ends when its last job does."""

    RUNS_FILE = "runs.txt"

    def __init__(self, runs: str | None = None, out: str | None = None, enabled: bool = True):
        self.runs, self.out, self.enabled = runs, out, enabled

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = _sweep_dir(config)  # fixed across sweeps (${paths.output_root}/multirun): forget the last one's
        if self.enabled and sweep_dir is not None:
            (sweep_dir / self.RUNS_FILE).unlink(missing_ok=True)

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        sweep_dir = _sweep_dir(config)
        if not self.enabled or sweep_dir is None or "output_dir" not in config:
            return
        with contextlib.suppress(OSError):  # a note lost is a table not rebuilt, never a failed job
            sweep_dir.mkdir(parents=True, exist_ok=True)
            with open(sweep_dir / self.RUNS_FILE, "a") as f:
                f.write(f"{Path(str(config.output_dir)).resolve()}\n")

    def on_multirun_end(self, config, **kwargs) -> None:
        if not self.enabled:
            return
        repo = Path(__file__).resolve().parents[2]
        script = repo / "scripts" / "make_tables.py"
        sweep_dir = _sweep_dir(config) or Path.cwd()
        noted = sweep_dir / self.RUNS_FILE
        dirs = sorted(set(noted.read_text().split("\n")) - {""}) if noted.is_file() else []
        if self.runs:
            runs, out = Path(self.runs), Path(self.out) if self.out else repo / "results" / "tables"
        elif not dirs:
            print(f"no run of this sweep noted its folder in {noted}: no tables rebuilt")
            return
        elif all(Path(d).is_relative_to(repo / "results" / "runs") for d in dirs):
            runs, out = repo / "results" / "runs", Path(self.out) if self.out else repo / "results" / "tables"
        else:
            runs = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else Path(dirs[0]).parent
            out = Path(self.out) if self.out else sweep_dir / "tables"
        spec = importlib.util.spec_from_file_location("make_tables", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            module.main(["--runs", str(runs), "--out", str(out)])
        except Exception as e:  # the runs are what matters; a table that cannot be built must not hide them
            print(f"warning: {script} failed after the multirun ({type(e).__name__}: {e}); run it by hand")


def _sweep_dir(config) -> Path | None:
    """The multirun's folder (hydra.sweep.dir), or None outside a multirun."""
    try:
        from hydra.types import RunMode
        if config.hydra.mode != RunMode.MULTIRUN:
            return None
        return Path(str(config.hydra.sweep.dir)).resolve()
    except Exception:  # noqa: BLE001 (a config without Hydra's node: not a multirun)
        return None


class Preemption:
    """Stop requests from the cluster: SIGTERM (preemption, scancel, Slurm's time limit), SIGUSR1 (`sbatch
    --signal=USR1@SECONDS`) and SIGUSR2 (what submitit asks Slurm to send before the time limit). The handler only
    notes the signal; the training loop asks `poll()` after every optimizer step (all ranks agree on the same
    step), writes a mid-epoch checkpoint and calls `exit()`. Used as a context manager: handlers restored after.

    The ranks agree through a gloo group of their own, on the CPU: asking costs no GPU synchronisation per step.
    `poll()` does not wait for that all-reduce either: it starts one and answers with the previous one's result,
    finished by then (every rank has been through a gradient all-reduce since), so a stop lands one update later
    and no step pays the gloo round trip (0.5 ms for 2 ranks here on a 2-core CPU, 5 ms for 8 oversubscribed
    ones; more across nodes over TCP), which a blocking all-reduce would add to every update.

    The same all-reduce carries a stop that is not a signal: a rank past data.max_bad_images asks with
    `poll(bad_data=True)`, and every rank then gets BAD_DATA at the same update (it outranks any signal).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    BAD_DATA = 256  # above every signal number: the ranks agree on the largest request

    def __init__(self):
        self.signum, self.previous, self.group, self.pending = 0, {}, None, None

    def __enter__(self):
        self.group = cpu_group()  # every rank enters (a collective call)
        for s in self.SIGNALS:
            self.previous[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self._finish_pending()  # no collective left in flight on a group about to go
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _note(self, signum, frame) -> None:
        if not self.signum:
            print(f"caught {signal.Signals(signum).name}: finishing this step, then a checkpoint and exit", flush=True)
        self.signum = signum

    def requested(self, bad_data: bool = False) -> int:
        """The signal any rank caught (0: none), or BAD_DATA if any rank passed `bad_data=True`, the same on every
        rank (an all-reduce: call it on all)."""
        self._finish_pending()
        return max_over_ranks(self._request(bad_data), self.group)

    def poll(self, bad_data: bool = False) -> int:
        """As `requested()` one call late, without waiting: the signal any rank had caught at the previous poll (0
        at the first), or BAD_DATA, the same on every rank; call it on all ranks at the same steps. Without a
        process group it is this process's request, at once."""
        if self.group is None:
            return self._request(bad_data)
        agreed = self._finish_pending()
        self.pending = start_max_over_ranks(self._request(bad_data), self.group)
        return agreed

    def _request(self, bad_data: bool) -> int:
        return self.BAD_DATA if bad_data else self.signum

    def _finish_pending(self) -> int:
        result, self.pending = self.pending, None
        return result() if result is not None else 0

    def exit(self, signum: int) -> None:
        """After the checkpoint: under submitit, its own handler for this signal requeues the job (rank 0: it runs
        `scontrol requeue`, or asks submitit's local executor to restart the tasks); then exit with 128 + signum,
        which Slurm's --requeue or a wrapper script can act on. The same command resumes from the checkpoint.

        The other ranks leave only once rank 0 has requeued: a rank exiting non-zero first would, under srun
        --kill-on-bad-exit (conf/hydra/launcher/slurm.yaml), end rank 0 in the middle of `scontrol requeue` and
        the job with it, never to resume."""
        self._finish_pending()
        self._barrier()  # every rank is past the checkpoint before anyone leaves
        previous = self.previous.get(signum)
        if getattr(previous, "__name__", "") != "checkpoint_and_try_requeue":
            raise SystemExit(128 + signum)
        try:
            if is_main():
                previous(signum, None)  # requeues, then exits itself (SystemExit), or raises when it may not
        finally:
            self._barrier()  # rank 0 is through with the requeue (or failed at it): now everyone leaves
        raise SystemExit(128 + signum)

    def _barrier(self) -> None:
        """A barrier on this object's gloo group: on the CPU, so it is the same under NCCL."""
        if self.group is not None:
            import torch.distributed as dist
            dist.barrier(group=self.group)
        else:
            barrier()
