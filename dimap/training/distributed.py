"""torchrun-aware process groups: NCCL on CUDA, gloo on CPU; a plain `python` run is a world of one.

Every helper works (as a no-op or identity) when no process group exists, so library code never branches on it,
and puts its tensors on the device the backend reduces on (CUDA for NCCL), so no caller can hand NCCL a CPU tensor.
"""
import datetime
import os
import socket

import torch
import torch.distributed as dist

from dimap.errors import UserError


def under_torchrun() -> bool:
    """Started by torchrun (torch.distributed.run sets TORCHELASTIC_RUN_ID), whatever its world size."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def env_from_submitit() -> bool:
    """When this process is a task of a submitit job (Hydra's submitit launcher: Slurm or its local executor),
    export its rank, world size, local rank and master address/port as torchrun's variables, so that
    init_distributed reads one set of variables whoever started the process. True when it did.

    CUDA_VISIBLE_DEVICES is left alone: every task sees the node's GPUs and LOCAL_RANK picks one, as under torchrun.
    A process that torchrun started inside a submitit job (a user's own script) keeps torchrun's variables: they
    name its rank among torchrun's workers, where the job's would make every worker rank 0 of a world of one.
    """
    if not os.environ.get("SUBMITIT_EXECUTOR"):  # how submitit marks its tasks (JobEnvironment.activated)
        return False
    if under_torchrun():
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return True


def init_distributed(device: str = "auto") -> tuple[torch.device, int, int]:
    """(device, rank, world_size) from torchrun's RANK / WORLD_SIZE / LOCAL_RANK; joins the process group.

    `device`: auto (cuda if available, else cpu), cuda or cpu. One GPU per process: LOCAL_RANK modulo the GPUs
    this process sees picks it (all of the node's GPUs, or the one Slurm's --gpus-per-task=1 leaves visible).
    Under torchrun the process group is created even for a world of one, so `torchrun --nproc_per_node=1` on one
    GPU sends every collective through NCCL as an 8-GPU run does.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise UserError(f"device={device!r} is unknown: pass device=auto, device=cuda or device=cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but torch sees no GPU: pass device=cpu or install a CUDA build of torch")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        count = torch.cuda.device_count()
        if count > 1 and local_rank >= count:  # more processes than GPUs on the node: NCCL would share a GPU
            raise UserError(f"LOCAL_RANK={local_rank} but this process sees {count} GPUs: pass torchrun "
                            "--nproc_per_node at most the number of GPUs")
        dev = torch.device("cuda", local_rank % count)
        torch.cuda.set_device(dev)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for what autocast leaves in fp32, as timm's train.py
    else:
        dev = torch.device("cpu")
    if (world > 1 or under_torchrun()) and not dist.is_initialized():
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30), **kwargs)
    return dev, rank, world


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return get_rank() == 0


def collective_device() -> torch.device:
    """Where the process group's collectives take tensors: this process's GPU for NCCL, the CPU for gloo."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    """All-reduce `t` in place on the backend's device; `t` may live anywhere (a CPU count under NCCL too)."""
    if not is_dist():
        return t
    on = t.to(collective_device())
    dist.all_reduce(on, op=op)
    if on is not t:
        t.copy_(on)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks, in place (identity on one process)."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.MAX)


def cpu_group():
    """A gloo group over all ranks for small control values kept on the CPU (no GPU synchronisation), or None
    without a process group. A collective call: every rank makes it, in the same order.

    Across nodes gloo, unlike NCCL, binds to the address the host's own name resolves to: where that is a loopback
    address (Debian's 127.0.1.1 line in /etc/hosts) the other nodes cannot connect and new_group would wait out the
    30-minute timeout. Such a run is refused up front, on every rank together, naming GLOO_SOCKET_IFNAME."""
    if not is_dist():
        return None
    if not os.environ.get("GLOO_SOCKET_IFNAME"):
        hosts = all_gather_object((socket.gethostname(), _own_address()))
        loopback = sorted({f"{h} ({a})" for h, a in hosts if a.startswith("127.") or a in ("::1", "unresolved")})
        if len({h for h, _ in hosts}) > 1 and loopback:
            raise UserError(f"{', '.join(loopback)} resolve(s) its own name to a loopback address, which the other "
                            "nodes cannot reach over gloo: export GLOO_SOCKET_IFNAME=<the interface the nodes share, "
                            "as NCCL_SOCKET_IFNAME, e.g. ib0 or eth0> on every node")
    return dist.new_group(backend="gloo")


def _own_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "unresolved"


def max_over_ranks(value: int, group) -> int:
    """The largest `value` of all ranks, through `group` (from cpu_group); `value` itself without one."""
    t = torch.tensor([int(value)], dtype=torch.int64)
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


def start_max_over_ranks(value: int, group):
    """max_over_ranks without waiting: starts the all-reduce through `group` (not None) and returns a function
    that waits for it and gives the result."""
    t = torch.tensor([int(value)], dtype=torch.int64)
    work = dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group, async_op=True)

    def result() -> int:
        work.wait()
        return int(t.item())

    return result


def all_gather_object(obj) -> list:
    """`obj` of every rank, in rank order. Under NCCL torch pickles through this process's current GPU, which
    init_distributed set (torch.cuda.set_device), so objects holding CPU tensors are fine."""
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main_shared(fn):
    """`fn()` on rank 0 only; every rank returns its result, or raises together when it failed (a collective: all
    ranks call it). A rank-0-only step that raises alone (a full disk under a checkpoint, an I/O error on the lock
    file) would leave the other ranks in their next collective until the 30-minute NCCL timeout wherever no
    torchrun stops them (Slurm tasks started by submitit). Rank 0 re-raises its own error; the others raise a
    UserError with its sentence (or a RuntimeError naming it, for a bug)."""
    result = error = None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # shared below; rank 0 raises the original
            error = e
    if not is_dist():
        if error is not None:
            raise error
        return result
    result, failure = broadcast_object((result, None if error is None else (isinstance(error, UserError),
                                                                            f"{type(error).__name__}: {error}")))
    if error is not None:
        raise error
    if failure is not None:
        user, message = failure
        if user:
            raise UserError(message.split(": ", 1)[1])
        raise RuntimeError(f"rank 0 failed ({message}); this rank stops with it")
    return result


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` whenever a process group exists (a torchrun world of one too).

    broadcast_buffers=False, as the official Swin code: Swin's buffers (relative position index, attention masks)
    are constants, identical on every rank, so re-broadcasting them before every forward is pure cost.
    """
    if not is_dist():
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel
    # torch 2.14 renames the switch (the old name warns); older torch, e.g. 2.11 on the GPU machine, lacks the new one
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if renamed else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)
