"""Benchmark: the loader workers a Slurm task gets and the images/s they load, measured inside the tasks of a real
Slurm job (one sbatch job of --tasks tasks x --cpus-per-task CPUs through submitit, as hydra/launcher=slurm
submits, with conf/hydra/launcher/slurm.yaml's setup lines).

    sudo scripts/slurm_local.sh up                                  # or any Slurm whose nodes see this folder
    python scripts/make_imagefolder.py --out .cache/mnist_imagenet
    python scripts/bench_loader_workers.py --root .cache/mnist_imagenet --layout 2x1 1x2

Each task reads its CPU affinity and the variables srun gave it, then counts its workers for data.num_workers
(--num-workers) twice: by the rule before the fix (every CPU of its mask divided by the tasks on the node) and by
dimap.training.data.capped_workers (an srun task bound to its CPUs keeps them whole). It loads training images of
data=imagenet (train.py's dataset and augmentation, bench_data.load_once) with each count and with workers 0,
--repeats times, and reports steady images/s and images/s per worker. Writes OUT/loader_workers_slurm.json.
"""
import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import load_once  # noqa: E402
from bench_masks import ROOT, record  # noqa: E402

from dimap.report import write_json  # noqa: E402


def measure(root: str, num_workers: int, batch: int, images: int, repeats: int, seed: int) -> dict:
    """In one Slurm task: its CPUs, its worker counts before and after the fix, and the images/s at each."""
    import torch
    from dimap.training.data import build_datasets, capped_workers
    from dimap.training.distributed import env_from_submitit

    env_from_submitit()  # LOCAL_WORLD_SIZE, RANK as train.py sees them
    mask = sorted(os.sched_getaffinity(0))
    local, rank = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["RANK"])
    before = min(num_workers, max(1, len(mask) // local))  # the rule before the fix
    after = capped_workers(num_workers, int(os.environ["WORLD_SIZE"]), rank)
    data = yaml.safe_load((ROOT / "conf" / "data" / "imagenet.yaml").read_text()) | {"root": root}
    train = build_datasets(data)[0]
    torch.set_num_threads(1)
    rates = {}
    for w in sorted({0, before, after}):
        runs = [load_once(train, w, batch, images, seed + r)["steady_images_per_s"] for r in range(repeats)]
        rates[str(w)] = {"median_images_per_s": statistics.median(runs), "runs_images_per_s": runs,
                         "images_per_s_per_worker": statistics.median(runs) / max(w, 1)}
    env = {k: os.environ.get(k) for k in ("SLURM_CPUS_ON_NODE", "SLURM_CPUS_PER_TASK", "SRUN_CPUS_PER_TASK",
                                          "SLURM_CPU_BIND", "LOCAL_WORLD_SIZE", "SLURM_KILL_BAD_EXIT")}
    return {"rank": rank, "cpus": mask, "env": env, "workers_before_fix": before, "workers_after_fix": after,
            "images_per_s": rates}


def slurm_facts() -> dict:
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    keep = ("TaskPlugin ", "ProctrackType", "SelectTypeParameters", "TaskPluginParam")
    return {"version": version, "config": {line.split("=")[0].strip(): line.split("=", 1)[1].strip()
                                           for line in conf.splitlines() if line.startswith(keep)}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="an ImageNet-style folder with train/ and val/, seen by the nodes")
    p.add_argument("--layout", nargs="+", default=["2x1", "1x2"], help="TASKSxCPUS_PER_TASK, one job each")
    p.add_argument("--num-workers", type=int, default=8, help="data.num_workers asked for (conf/data/imagenet.yaml)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=512, help="images per worker count and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = p.parse_args(argv)
    import submitit

    # the tasks unpickle `measure`, which refers to bench_data (this folder) and dimap (the repository)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "scripts"), str(ROOT),
                                                             os.environ.get("PYTHONPATH")]))
    launcher = yaml.safe_load((ROOT / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text())
    root = str(Path(args.root).resolve())
    results = {"slurm": slurm_facts(), "layouts": {}}
    for layout in args.layout:
        tasks, cpus = (int(x) for x in layout.split("x"))
        setup = [line.replace("${hydra.launcher.cpus_per_task}", str(cpus)) for line in launcher["setup"]]
        executor = submitit.SlurmExecutor(folder=ROOT / ".cache" / "bench_loader_workers" / "%j")
        executor.update_parameters(nodes=1, ntasks_per_node=tasks, cpus_per_task=cpus, mem="4GB", time=30,
                                   setup=setup, job_name="bench_loader_workers")
        job = executor.submit(measure, root, args.num_workers, args.batch, args.images, args.repeats, args.seed)
        per_task = job.results()
        results["layouts"][layout] = {"tasks": tasks, "cpus_per_task": cpus, "job_id": job.job_id,
                                      "tasks_measured": per_task}
        for t in per_task:
            rates = ", ".join(f"{w} worker(s) {v['median_images_per_s']:.0f} img/s ({v['images_per_s_per_worker']:.0f}"
                              "/worker)" for w, v in t["images_per_s"].items())
            print(f"{layout} rank {t['rank']}: CPUs {t['cpus']}; workers before fix {t['workers_before_fix']}, "
                  f"after {t['workers_after_fix']}; {rates}", flush=True)
    path = Path(args.out) / "loader_workers_slurm.json"
    # the record keeps paths relative to the repository (placeholders for folders outside it)
    args.root = os.path.relpath(root, ROOT) if root.startswith(str(ROOT)) else "/path/to/imagefolder"
    args.out = os.path.relpath(Path(args.out).resolve(), ROOT)
    write_json(path, record("loader_workers_slurm", args, results, "cpu"))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
