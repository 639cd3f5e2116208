"""Before and beside a paper sweep: what it will run, the sbatch script it will submit, and its prune-only counts.

Sweeps themselves are Hydra multiruns of train.py (conf/paper/tableN.yaml lists a table's experiments):
    python train.py -m hydra/launcher=slurm +paper=table1 data.root=/data/imagenet

This script adds what Hydra does not:
    python scripts/sweep.py --table 1 hydra.launcher.partition=gpu data.root=/data/imagenet
        every row's output_dir and whether it is finished (then skipped), the multirun command to run, and the
        sbatch script submitit will write for it (nothing is submitted)
    python scripts/sweep.py --table 1 --prune-only model.weights=random [--dry-run] [--force]
        params and FLOPs of every row with prune.py (no data, no training), into results/runs/prune_only/tableN/ROW
        (--runs-dir moves them; make_tables.py reads results/runs unless given --runs DIR);
        rows whose summary.json already holds params_nonzero are skipped unless --force
"""
import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("1", "3", "4")


def table_experiments(table: str) -> list[str]:
    """The experiment names conf/paper/tableN.yaml sweeps over, in its order."""
    from omegaconf import OmegaConf
    if table not in TABLES:
        sys.exit(f"error: --table {table} is unknown: use one of {', '.join(TABLES)}")
    cfg = OmegaConf.load(ROOT / "conf" / "paper" / f"table{table}.yaml")
    return [n.strip() for n in cfg.hydra.sweeper.params.experiment.split(",")]


def compose(name: str, overrides: list[str], hydra: bool = False):
    from hydra import compose as hydra_compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3", job_name="train"):
        return hydra_compose("train", overrides=[f"experiment={name}", *overrides], return_hydra_config=hydra)


def summary_holds(output_dir: str, key: str) -> bool:
    try:
        return json.loads((ROOT / output_dir / "summary.json").read_text()).get(key) is not None
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def sbatch_script(name: str, overrides: list[str], n_jobs: int) -> str:
    """The sbatch script Hydra's submitit launcher submits for this sweep, built by submitit itself the way the
    launcher builds it (hydra_submitit_launcher's BaseSubmititLauncher.launch), without a Slurm cluster."""
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    cfg = compose(name, ["hydra/launcher=slurm", *overrides], hydra=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    folder = params.pop("submitit_folder")
    executor = object.__new__(SlurmExecutor)  # SlurmExecutor.__init__ refuses to run where there is no srun
    SlurmExecutor.__bases__[0].__init__(executor, folder, max_num_timeout=params.pop("max_num_timeout"))
    executor.python = shlex.quote(sys.executable)
    # the launcher passes generic keys (timeout_min, mem_gb...) and slurm_* ones to submitit's AutoExecutor,
    # which maps the generic ones with SlurmExecutor's own table and strips the prefix
    executor.update_parameters(**executor._convert_parameters({k: v for k, v in params.items() if v is not None}))
    executor.parameters["map_count"] = n_jobs  # one array job, one task per point, as the launcher's map_array
    return executor._make_submission_file_text(executor._submitit_command_str, "preview")


def show_sweep(table: str, overrides: list[str]) -> None:
    names = table_experiments(table)
    for name in names:
        out = compose(name, ["hydra/launcher=slurm", *overrides]).output_dir
        print(f"# {'skip' if summary_holds(out, 'top1') else 'run '} {name} -> {out}")
    print(shlex.join(["python", "train.py", "-m", "hydra/launcher=slurm", f"+paper=table{table}", *overrides]))
    print(f"# the sbatch script submitit writes (one array job of {len(names)}; finished rows end at once):")
    print(sbatch_script(names[0], overrides, len(names)))


def prune_only(table: str, overrides: list[str], dry_run: bool, force: bool, runs_dir: str) -> int:
    from omegaconf import OmegaConf
    failed = []
    for name in table_experiments(table):
        cfg = compose(name, [])
        out = f"{runs_dir.rstrip('/')}/{name}"
        cmd = ["python", "prune.py", f"model={OmegaConf.select(cfg, 'model.short')}", f"prune={cfg.prune.method}",
               f"prune.ratio={cfg.prune.ratio}", f"output_dir={out}", *overrides]
        if not force and summary_holds(out, "params_nonzero"):
            print(f"# skip {name}: {out}/summary.json is finished", flush=True)
            continue
        print(shlex.join(cmd), flush=True)
        if not dry_run and subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT).returncode != 0:
            failed.append(name)
    if failed:
        print(f"# {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
    if not (ROOT / runs_dir).resolve().is_relative_to(ROOT / "results" / "runs"):  # make_tables.py reads only that
        print(f"# tables from these rows: python scripts/make_tables.py --runs {runs_dir} (the default, "
              "results/runs, does not hold them)", flush=True)
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", required=True, choices=TABLES, help="the paper table (conf/paper/tableN.yaml)")
    p.add_argument("--prune-only", action="store_true", help="run prune.py (no data, no training) at each row")
    p.add_argument("--dry-run", action="store_true", help="with --prune-only: print the commands, run nothing")
    p.add_argument("--force", action="store_true", help="with --prune-only: rerun rows that are finished")
    p.add_argument("--runs-dir", default="results/runs/prune_only", help="with --prune-only: where rows go (tables from "
                   "elsewhere than results/runs: make_tables.py --runs DIR)")
    p.add_argument("overrides", nargs="*", help="key=value Hydra overrides for every row")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"{bad[0]!r} is not a key=value override")
    if args.prune_only:
        return prune_only(args.table, args.overrides, args.dry_run, args.force, args.runs_dir)
    show_sweep(args.table, args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
