"""Run a sweep: one job per point, one after another, each in its own folder under results/runs.

    python scripts/sweep.py --table 1 --dry-run --nproc-per-node 8           # print the 9 Table 1 DIMAP jobs
    python scripts/sweep.py --table 1 dense 3 4 --nproc-per-node 8 data.root=/data/imagenet
    python scripts/sweep.py --experiments table1/swin_t_dimap3 table4/swin_t_single_module
    python scripts/sweep.py --models swin_t swin_s --methods dimap uniform --ratios 0.15 0.55 data.root=...
    python scripts/sweep.py --table 1 --prune-only model.weights=random       # params/FLOPs only, no data

A point is one experiment file (conf/experiment/tableN/ROW.yaml; its output_dir is results/runs/tableN/ROW) or
one grid point (model x method x ratio, in results/runs/grid/MODEL_METHOD_rRATIO, Hydra defaults otherwise:
train=paper, data=imagenet). Training points run `torchrun ... train.py`; with --prune-only every point runs
`python prune.py` instead (same model, method and ratio, no data), into results/runs/prune_only/... so a
prune-only summary never sits where the trained run of that point will write its own. Trailing key=value
arguments are passed to every job; --runs-dir moves every point's folder elsewhere. A point whose summary.json
already holds what the point produces (top1 for a training or evaluation point, params_nonzero for a prune-only
point) is skipped, so a killed sweep resumes where it stopped.

Multi-node: start the same command on every node with --nnodes, --node-rank and --master-addr; all nodes walk
the points in the same order, and results/runs must be on a filesystem they share (the skip test reads it).

For a single process, Hydra's multirun does the same grid without this script (each job writes to its own
output_dir, ${paths.output_root}/prune/MODEL_METHOD_rRATIO by default):
    python prune.py -m model=swin_t,swin_s,swin_b prune.ratio=0.15,0.35,0.55
"""
import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "conf" / "experiment"
RUNS = "results/runs"
MODEL_ORDER = {"swin_t": 0, "swin_s": 1, "swin_b": 2}
TABLES = {"1": "table1/*_dimap*.yaml", "dense": "table1/*_dense.yaml", "3": "table3/*.yaml", "4": "table4/*.yaml"}


def read_experiment(name: str) -> dict:
    """model, method, ratio and output_dir of conf/experiment/NAME.yaml (what a prune-only run needs)."""
    from omegaconf import OmegaConf
    path = EXPERIMENTS / f"{name}.yaml"
    if not path.is_file():
        sys.exit(f"error: {path} does not exist: pass an experiment name like table1/swin_t_dimap3")
    cfg = OmegaConf.load(path)
    groups = {}
    for entry in cfg.get("defaults", []):
        if not isinstance(entry, str):
            for key, value in entry.items():
                groups[key.removeprefix("override ").lstrip("/")] = value
    return {"name": name, "model": groups["model"], "method": groups["prune"], "ratio": float(cfg.prune.ratio),
            "epochs": cfg.get("train", {}).get("epochs"), "output_dir": cfg.output_dir}


def table_experiments(table: str) -> list[str]:
    if table not in TABLES:
        sys.exit(f"error: --table {table} is unknown: use one of {', '.join(TABLES)}")
    names = [p.relative_to(EXPERIMENTS).with_suffix("").as_posix() for p in EXPERIMENTS.glob(TABLES[table])]
    return sorted(names, key=lambda n: (MODEL_ORDER.get(read_experiment(n)["model"], 9), n))


def launcher(args) -> list[str]:
    cmd = ["torchrun", f"--nproc_per_node={args.nproc_per_node}"]
    if args.nnodes > 1:
        cmd += [f"--nnodes={args.nnodes}", f"--node_rank={args.node_rank}", f"--master_addr={args.master_addr}",
                f"--master_port={args.master_port}"]
    return cmd


def points(args) -> list[dict]:
    """Every point of the sweep: its command and its output folder, in run order."""
    names = list(args.experiments or [])
    for table in args.table or []:
        names += table_experiments(table)
    pts = []
    runs = args.runs_dir.rstrip("/")
    for name in names:
        e = read_experiment(name)
        if args.prune_only:
            out = f"{runs}/prune_only/{name}"
            cmd = ["python", "prune.py", f"model={e['model']}", f"prune={e['method']}", f"prune.ratio={e['ratio']}",
                   f"output_dir={out}"]
        elif runs == RUNS:
            out, cmd = e["output_dir"], launcher(args) + ["train.py", f"experiment={name}"]
        else:  # the experiment files name results/runs/...: move the point under --runs-dir
            out = f"{runs}/{name}"
            cmd = launcher(args) + ["train.py", f"experiment={name}", f"output_dir={out}"]
        pts.append({"name": name, "cmd": cmd + args.overrides, "output_dir": out})
    for model in args.models or []:
        for method in args.methods:
            for ratio in args.ratios:
                name = f"{model}_{method}_r{ratio:g}"
                common = [f"model={model}", f"prune={method}", f"prune.ratio={ratio:g}"]
                if args.prune_only:
                    out = f"{runs}/prune_only/grid/{name}"
                    cmd = ["python", "prune.py", *common, f"output_dir={out}"]
                else:  # ~experiment drops train.yaml's default experiment (the MNIST demo)
                    out = f"{runs}/grid/{name}"
                    cmd = launcher(args) + ["train.py", "~experiment", *common, f"output_dir={out}",
                                            "logger.group=grid", f"logger.name={name}"]
                pts.append({"name": f"grid/{name}", "cmd": cmd + args.overrides, "output_dir": out})
    return pts


def finished(output_dir: str, prune_only: bool) -> bool:
    """True when output_dir/summary.json holds this point's result (a finished run writes it last)."""
    path = ROOT / output_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (summary.get("params_nonzero") if prune_only else summary.get("top1")) is not None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", nargs="+", help="paper tables to run: 1 (DIMAP rows), dense (Table 1 baselines), 3, 4")
    p.add_argument("--experiments", nargs="+", help="experiment names, e.g. table1/swin_t_dimap3")
    p.add_argument("--models", nargs="+", help="grid: model configs, e.g. swin_t swin_s swin_b")
    p.add_argument("--methods", nargs="+", default=["dimap"], help="grid: prune configs (default dimap)")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.15, 0.35, 0.55], help="grid: prune.ratio values")
    p.add_argument("--prune-only", action="store_true", help="run prune.py (no data, no training) at each point")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--runs-dir", default=RUNS, help=f"where the points' folders go (default {RUNS})")
    p.add_argument("--force", action="store_true", help="run points that already have a finished summary.json")
    p.add_argument("--nproc-per-node", type=int, default=8)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("overrides", nargs="*", help="key=value Hydra overrides passed to every job")
    args = p.parse_args(argv)
    if not (args.table or args.experiments or args.models):
        p.error("nothing to run: pass --table, --experiments or --models")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"{bad[0]!r} is not a key=value override")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    failed = []
    for pt in points(args):
        line = shlex.join(pt["cmd"])
        if not args.force and finished(pt["output_dir"], args.prune_only):
            print(f"# skip {pt['name']}: {pt['output_dir']}/summary.json is finished", flush=True)
            continue
        print(line, flush=True)
        if args.dry_run:
            continue
        cmd = [sys.executable, *pt["cmd"][1:]] if pt["cmd"][0] == "python" else pt["cmd"]
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            failed.append(pt["name"])
            print(f"# FAILED {pt['name']}", flush=True)
    if failed:
        print(f"# {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
