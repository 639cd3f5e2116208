"""A failure on one rank ends every rank within seconds, whoever started the processes.

torchrun stops the other workers when one fails, but under srun (without --kill-on-bad-exit) or submitit nothing
does: the survivors wait in their next NCCL collective, which never notices a dead peer, for the process group's
30-minute timeout. An OOM on one GPU, or wandb.init failing on rank 0, then holds an 8-GPU node for half an hour.

`FailTogether` closes that gap through the process group's own key-value store (the TCPStore torchrun's agent,
or rank 0 under srun and submitit, serves): a rank whose run raises writes one key naming its error before it
exits, and a thread on every rank polls for that key once a second. A rank that sees it, and has not ended by
itself a few seconds later, prints the failed rank's error and exits with status 1, from whatever collective its
main thread is stuck in. A store that stops answering means its host (rank 0 under srun) has died, however it died
(the kernel's OOM killer, kill -9): the same exit. Preemption's exits (128 + signal) and a clean end are not
failures: they announce nothing.
"""
import datetime
import os
import sys
import threading

import torch.distributed as dist

from dimap.training.distributed import barrier, get_rank, get_world_size, is_dist

POLL_S = 1.0  # how often every rank asks the store; one small request, on a thread of its own
GRACE_S = 3.0  # a rank failing together with the others (a shared UserError) ends by itself within this


def _key() -> str:
    # torchrun's agent keeps its store across restarts (--max-restarts): each restart watches a key of its own
    return f"dimap/failed/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"


def _connect():
    """A connection of our own to the default process group's store (the main thread may be blocked in a call on
    its own connection); None without one."""
    store = dist.distributed_c10d._get_default_store()
    try:
        return store.clone()
    except (AttributeError, RuntimeError):
        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not (addr and port):
            return None
        return dist.TCPStore(addr, int(port), is_master=False, timeout=datetime.timedelta(seconds=30))


def is_failure(exc: BaseException | None) -> bool:
    """Whether `exc`, ending a run, is a failure the other ranks must learn of: not a clean exit and not a
    preemption's requeue exit (128 + signal, taken by every rank together)."""
    if exc is None:
        return False
    if isinstance(exc, SystemExit):
        code = exc.code
        return isinstance(code, int) and 0 < code < 128 or isinstance(code, str)
    return True


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


class FailTogether:
    """Context manager around a run, entered by every rank once the process group exists (a no-op without one):
    an exception leaving the block on any rank ends every rank within POLL_S + GRACE_S seconds."""

    def __init__(self):
        self.store, self.thread, self.stopped, self.key = None, None, threading.Event(), _key()

    def __enter__(self):
        if is_dist() and get_world_size() > 1:
            self.store = _connect()
        if self.store is not None:
            self.thread = threading.Thread(target=self._watch, name="dimap-fail-together", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, kind, exc, tb):
        if self.store is not None and kind is None:
            # Every rank is done before any stops watching: rank 0 may serve the store, and a rank-0-only step at
            # the end (writing summary.json) that fails still ends the ranks waiting here, through the watch
            barrier()
        self.stopped.set()
        if self.store is not None and is_failure(exc):
            try:
                self.store.set(self.key, f"rank {get_rank()} failed ({describe(exc)})")
            except Exception:  # noqa: BLE001 (the store's host is gone too: the others see that instead)
                pass
        return False

    def _watch(self) -> None:
        while not self.stopped.wait(POLL_S):
            try:
                if not self.store.check([self.key]):
                    continue
                message = self.store.get(self.key).decode(errors="replace")
            except Exception:  # noqa: BLE001 (any error of the store's client means it is unreachable)
                message = ("the process group's store stopped answering: the process serving it (rank 0 under "
                           "srun or submitit, or torchrun's agent) has ended")
            if self.stopped.wait(GRACE_S):
                return  # this rank ended by itself meanwhile, with its own message
            print(f"error: {message}; rank {get_rank()} stops with it", file=sys.stderr, flush=True)
            os._exit(1)
