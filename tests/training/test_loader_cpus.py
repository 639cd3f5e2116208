"""Loader workers per process from the CPUs a launcher gives it (capped_workers): an srun task bound to its own
CPUs keeps them whole; only CPUs the node's processes share are divided among them."""
import os

import pytest

from dimap.training.data import capped_workers, loader_cpus

SLURM_VARS = ("SLURM_STEP_ID", "SLURM_CPUS_ON_NODE", "TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE")


@pytest.fixture
def node(monkeypatch):
    """node(cpus_in_mask, **env): this process's affinity mask mocked to that many CPUs, the environment set."""
    for key in SLURM_VARS:
        monkeypatch.delenv(key, raising=False)

    def set_node(mask, **env):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(mask)))
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
    return set_node


def test_an_srun_task_bound_to_its_cpus_keeps_them_all(node, capsys):
    # 8 GPUs, cpus_per_task=10, task/affinity: each task's mask holds its own 10 CPUs of the job's 80
    node(10, SLURM_STEP_ID=0, SLURM_CPUS_ON_NODE=80, LOCAL_WORLD_SIZE=8)
    assert loader_cpus(8)[:2] == (10, 1)
    assert capped_workers(10, world_size=8, rank=3) == 10  # was 10 // 8 = 1 worker per GPU
    assert "rank 3: 10 loader worker(s); CPUs 0,1,2,3,4,5,6,7,8,9: 10 bound to this task" in capsys.readouterr().out
    assert capped_workers(12, world_size=8) == 10


def test_unbound_srun_tasks_share_the_jobs_cpus_on_the_node_not_the_machines(node, capsys):
    node(96, SLURM_STEP_ID=0, SLURM_CPUS_ON_NODE=80, LOCAL_WORLD_SIZE=8)  # task/none: every task sees the machine
    assert capped_workers(16, world_size=8) == 10
    assert "capped at 10 (the 80 CPUs of the job on this node, shared by 8 task(s))" in capsys.readouterr().out


def test_torchrun_workers_share_their_agents_cpus_even_inside_a_slurm_step(node):
    node(80, SLURM_STEP_ID=0, SLURM_CPUS_ON_NODE=80, TORCHELASTIC_RUN_ID="x", LOCAL_WORLD_SIZE=8)
    assert capped_workers(16, world_size=8) == 10
    node(10, SLURM_STEP_ID=0, SLURM_CPUS_ON_NODE=80, TORCHELASTIC_RUN_ID="x", LOCAL_WORLD_SIZE=8)
    assert capped_workers(16, world_size=8) == 1  # one srun task of 10 CPUs running 8 torchrun workers


def test_without_slurm_the_machines_cpus_are_shared_by_the_local_processes(node, capsys, monkeypatch):
    node(16, LOCAL_WORLD_SIZE=8)
    assert capped_workers(8, world_size=8) == 2 and capped_workers(1, world_size=8) == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert capped_workers(8, world_size=4) == 4  # no LOCAL_WORLD_SIZE: the world is on this node
    assert capped_workers(0) == 0 and "rank" not in capsys.readouterr().out  # the per-task line: srun tasks only
