"""scripts/sweep.py and conf/paper: every paper row in its table's multirun, what a sweep will run and submit
(finished rows skipped), and the prune-only commands."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import sweep  # noqa: E402


@pytest.mark.parametrize("table, rows", [("1", 12), ("3", 24 * 2), ("4", 3)])  # Table 3: both readings
def test_each_table_sweeps_every_experiment_file_of_that_table(table, rows):
    files = {p.relative_to(ROOT / "conf/experiment").with_suffix("").as_posix()
             for p in (ROOT / f"conf/experiment/table{table}").glob("*.yaml")}
    names = sweep.table_experiments(table)
    assert len(names) == rows and len(set(names)) == rows and set(names) == files


def test_dry_run_shows_rows_the_multirun_command_and_its_sbatch_script(capsys, tmp_path):
    assert sweep.main(["--table", "4", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2",
                       "data.root=/data/imagenet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"# run  table4/{m}_single_module -> results/runs/table4/{m}_single_module"
                       for m in ("swin_t", "swin_s", "swin_b")]
    assert out[3] == ("python train.py -m hydra/launcher=slurm +paper=table4 hydra.launcher.partition=gpu "
                      "hydra.launcher.nodes=2 data.root=/data/imagenet")
    script = "\n".join(out[4:])
    for line in ("#SBATCH --array=0-2", "#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --ntasks-per-node=8", "#SBATCH --cpus-per-task=10", "#SBATCH --mem=320GB", "srun "):
        assert line in script, line


def test_finished_rows_are_marked_skipped(capsys, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"top1": 80.0}))
    assert sweep.main(["--table", "4", f"output_dir={tmp_path}"]) == 0
    assert capsys.readouterr().out.count(f"# skip") == 3


def test_prune_only_commands_skip_finished_rows_and_report_failures(monkeypatch, capsys, tmp_path):
    done = tmp_path / "table4" / "swin_t_single_module"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"params_nonzero": 1}))
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        return type("Done", (), {"returncode": 1 if "model=swin_b" in cmd else 0})()

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    assert sweep.main(["--table", "4", "--prune-only", "--runs-dir", str(tmp_path), "model.weights=random"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == f"# skip table4/swin_t_single_module: {done}/summary.json is finished"
    assert [c[:6] for c in calls] == [
        [sys.executable, "prune.py", f"model={m}", "prune=single_module", "prune.ratio=0.55",
         f"output_dir={tmp_path}/table4/{m}_single_module"] for m in ("swin_s", "swin_b")]
    assert all(c[-1] == "model.weights=random" for c in calls)
    assert "1 point(s) failed: table4/swin_b_single_module" in captured.err
    assert sweep.main(["--table", "4", "--prune-only", "--dry-run", "--force", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and len(calls) == 2  # 3 rows, then where make_tables.py must look for them
    assert out[-1].startswith(f"# tables from these rows: python scripts/make_tables.py --runs {tmp_path} ")
    sweep.main(["--table", "4", "--prune-only", "--dry-run", "--force"])  # the default, results/runs/prune_only
    assert "make_tables.py --runs" not in capsys.readouterr().out


def test_bad_arguments_exit():
    for argv in (["--table", "2"], [], ["--table", "1", "notanoverride"]):
        with pytest.raises(SystemExit):
            sweep.main(argv)
