"""The process-group helpers as a GPU run meets them: NCCL's device rule, torchrun worlds of one, one visible GPU
per process. There is no GPU here, so CUDA and NCCL are stood in for (mocked, or fake tensors) where needed."""
import re
import socket
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from dimap.errors import UserError
from dimap.training import distributed
from dimap.training.distributed import all_reduce_max, all_reduce_sum, cleanup, init_distributed, is_dist, wrap_ddp

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_nccl(monkeypatch):
    """A process group whose backend is NCCL: all_reduce, like NCCL's, refuses any tensor not on a GPU."""
    seen = []

    def all_reduce(t, op=None):
        seen.append(t.device)
        if t.device.type != "cuda":
            raise RuntimeError("No backend type associated with device type cpu")

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return seen


@pytest.mark.parametrize("reduce", [all_reduce_sum, all_reduce_max])
def test_collectives_hand_nccl_a_gpu_tensor_whatever_device_the_caller_used(fake_nccl, reduce):
    with FakeTensorMode(allow_non_fake_inputs=True):  # tensors "on cuda:0" without a GPU
        count = torch.zeros(1, dtype=torch.float64)  # e.g. check_masks' count of non-zero pruned weights
        out = reduce(count)
        assert out is count and out.device.type == "cpu"  # in place, on the caller's device
        reduce(torch.zeros(2, device="cuda:0"))
    assert fake_nccl == [torch.device("cuda", 0)] * 2


def test_gloo_collectives_stay_on_the_cpu(monkeypatch):
    seen = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, op=None: seen.append(t.device))
    all_reduce_sum(torch.zeros(1))
    assert seen == [torch.device("cpu")]


def test_no_raw_tensor_collective_outside_the_helpers():
    """Every tensor collective goes through dimap.training.distributed, which picks the backend's device."""
    raw = re.compile(r"\bdist\.(all_reduce|all_gather|all_gather_into_tensor|broadcast|reduce_scatter|reduce)\(")
    offenders = [str(p.relative_to(ROOT)) for p in [*ROOT.glob("dimap/**/*.py"), *ROOT.glob("*.py")]
                 if p.name != "distributed.py" and raw.search(p.read_text())]
    assert offenders == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(monkeypatch, world: int = 1, rank: int = 0, local_rank: int = 0, torchrun: bool = True):
    for key, value in {"WORLD_SIZE": world, "RANK": rank, "LOCAL_RANK": local_rank, "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": free_port()}.items():
        monkeypatch.setenv(key, str(value))
    if torchrun:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    else:
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)


def test_torchrun_with_one_process_still_creates_the_process_group_and_ddp(monkeypatch):
    torchrun_env(monkeypatch)
    try:
        device, rank, world = init_distributed("cpu")
        assert (device.type, rank, world) == ("cpu", 0, 1)
        assert is_dist() and distributed.dist.get_backend() == "gloo"  # nccl on a GPU: every collective goes there
        ddp = wrap_ddp(torch.nn.Linear(2, 2), device)
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        # Swin's buffers are constants: no broadcast before every forward (the attribute's name depends on torch)
        assert getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None)) is False
    finally:
        cleanup()
    assert not is_dist()


def test_plain_python_is_a_world_of_one_without_a_process_group(monkeypatch):
    torchrun_env(monkeypatch, torchrun=False)
    assert init_distributed("cpu")[2] == 1 and not is_dist()


def test_one_visible_gpu_per_process_is_used_whatever_local_rank_says(monkeypatch):
    """Slurm --gpus-per-task=1: LOCAL_RANK=3 but the process sees one GPU, cuda:0. Also TF32 matmuls on CUDA."""
    torchrun_env(monkeypatch, local_rank=3, torchrun=False)
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    before = torch.get_float32_matmul_precision()
    try:
        device, _, _ = init_distributed("auto")
        assert device == torch.device("cuda", 0) and chosen == [device]
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)  # one process per GPU of an 8-GPU node
    assert init_distributed("cuda")[0] == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # 4 processes on 2 GPUs: refused, not shared
    with pytest.raises(UserError, match="nproc_per_node"):
        init_distributed("cuda")


def _rank0_fails(rank, world, init_file, error, results):
    import datetime
    import torch.distributed as dist

    def write():
        raise error  # e.g. a full disk under rank 0's checkpoint

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    try:
        distributed.on_main_shared(write)
        dist.barrier()  # the next collective every rank would reach
        results[rank] = ("ran", "")
    except Exception as e:
        results[rank] = (type(e).__name__, str(e))
    dist.destroy_process_group()


@pytest.mark.parametrize("error", [UserError("no space left: free some"), OSError(5, "Input/output error")])
def test_a_rank_0_failure_ends_every_rank_together_not_at_the_timeout(tmp_path, error):
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_rank0_fails, args=(2, tmp_path / "init", error, results), nprocs=2)
    if isinstance(error, UserError):  # the same sentence on every rank
        assert results[0] == results[1] == ("UserError", str(error))
    else:  # rank 0 keeps its own error (traceback), the others name it
        assert results[0] == ("OSError", str(error))
        assert results[1] == ("RuntimeError", f"rank 0 failed (OSError: {error}); this rank stops with it")


def test_on_main_shared_without_a_process_group_is_a_plain_call():
    assert distributed.on_main_shared(lambda: 7) == 7
    with pytest.raises(OSError):
        distributed.on_main_shared(lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")))


@pytest.fixture
def two_nodes(monkeypatch):
    """Ranks on hosts gpu07 (this one, its name resolving to `own`) and gpu08 (a routable address); new_group
    recorded instead of made."""
    made, own = [], {"address": "10.0.0.7"}
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.socket, "gethostname", lambda: "gpu07")
    monkeypatch.setattr(distributed.socket, "gethostbyname", lambda name: own["address"])
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [obj, ("gpu08", "10.0.0.8")])
    monkeypatch.setattr(distributed.dist, "new_group", lambda **kw: made.append(kw) or "group")
    return made, own


def test_the_gloo_side_group_across_nodes_is_refused_where_a_host_name_resolves_to_loopback(two_nodes, monkeypatch):
    made, own = two_nodes
    assert distributed.cpu_group() == "group" and made == [{"backend": "gloo"}]  # routable: made
    own["address"] = "127.0.1.1"  # Debian's /etc/hosts: gloo would bind there, gpu08 could never connect
    with pytest.raises(UserError, match=r"gpu07 \(127\.0\.1\.1\) resolve.*export GLOO_SOCKET_IFNAME="):
        distributed.cpu_group()
    assert len(made) == 1
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "ib0")  # the user named the interface: gloo binds there
    assert distributed.cpu_group() == "group" and len(made) == 2


def test_one_node_may_resolve_its_name_to_loopback(two_nodes, monkeypatch):
    made, own = two_nodes
    own["address"] = "127.0.1.1"
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [obj, ("gpu07", "127.0.1.1")])
    assert distributed.cpu_group() == "group"
