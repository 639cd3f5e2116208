"""scripts/sweep.py: the commands each sweep prints, skipping finished points, and one real prune-only point."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import sweep  # noqa: E402


def dry(capsys, *argv) -> list[str]:
    assert sweep.main(["--dry-run", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_table1_dry_run_prints_the_nine_dimap_jobs(capsys):
    lines = dry(capsys, "--table", "1", "--nproc-per-node", "8")
    assert lines == [f"torchrun --nproc_per_node=8 train.py experiment=table1/{m}_dimap{i}"
                     for m in ("swin_t", "swin_s", "swin_b") for i in (1, 2, 3)]


def test_table_sizes_and_multinode_args(capsys):
    assert len(dry(capsys, "--table", "3")) == 24
    assert len(dry(capsys, "--table", "dense", "4")) == 3 + 3
    line = dry(capsys, "--experiments", "table4/swin_b_single_module", "--nproc-per-node", "4", "--nnodes", "2",
               "--node-rank", "1", "--master-addr", "10.1.2.3", "data.root=/data/imagenet")[0]
    assert line == ("torchrun --nproc_per_node=4 --nnodes=2 --node_rank=1 --master_addr=10.1.2.3 --master_port=29500 "
                    "train.py experiment=table4/swin_b_single_module data.root=/data/imagenet")


def test_prune_only_and_grid_commands(capsys):
    lines = dry(capsys, "--experiments", "table3/swin_t_uniform_50", "--prune-only", "model.weights=random")
    assert lines == ["python prune.py model=swin_t prune=uniform prune.ratio=0.5466 "
                     "output_dir=results/runs/prune_only/table3/swin_t_uniform_50 model.weights=random"]
    grid = dry(capsys, "--models", "swin_t", "swin_b", "--methods", "dimap", "uniform", "--ratios", "0.15", "0.55")
    assert len(grid) == 8 and grid[0] == (
        "torchrun --nproc_per_node=8 train.py '~experiment' model=swin_t prune=dimap prune.ratio=0.15 "
        "output_dir=results/runs/grid/swin_t_dimap_r0.15 logger.group=grid logger.name=swin_t_dimap_r0.15")


def test_finished_points_are_skipped(capsys, tmp_path):
    done = tmp_path / "table1" / "swin_t_dimap1"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"top1": 80.0, "params_nonzero": 1}))
    pruned_only = tmp_path / "table1" / "swin_t_dimap2"
    pruned_only.mkdir(parents=True)
    (pruned_only / "summary.json").write_text(json.dumps({"params_nonzero": 1}))  # no accuracy: not finished
    lines = dry(capsys, "--table", "1", "--runs-dir", str(tmp_path))
    assert lines[0] == f"# skip table1/swin_t_dimap1: {done}/summary.json is finished"
    assert lines[1].endswith(f"experiment=table1/swin_t_dimap2 output_dir={pruned_only}")
    assert len(lines) == 9
    assert len(dry(capsys, "--table", "1", "--runs-dir", str(tmp_path), "--force")) == 9


def test_run_mode_calls_each_point_and_reports_failures(monkeypatch, capsys, tmp_path):
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        return type("Done", (), {"returncode": 1 if "swin_s" in " ".join(cmd) else 0})()

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    argv = ["--models", "swin_t", "swin_s", "--ratios", "0.5", "--prune-only", "--runs-dir", str(tmp_path)]
    assert sweep.main(argv) == 1
    assert [c[0] for c in calls] == [sys.executable] * 2 and calls[0][1] == "prune.py"
    assert "1 point(s) failed: grid/swin_s_dimap_r0.5" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_only_point_runs_then_skips(capsys, tmp_path):
    """One real prune.py job (the nano Swin, random weights, seconds); a second sweep skips it."""
    argv = ["--models", "swin_nano", "--ratios", "0.5", "--prune-only", "--runs-dir", str(tmp_path), "plot=false"]
    assert sweep.main(argv) == 0
    summary = json.loads((tmp_path / "prune_only/grid/swin_nano_dimap_r0.5/summary.json").read_text())
    assert summary["model_short"] == "swin_nano" and summary["ratio"] == 0.5
    capsys.readouterr()
    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.startswith("# skip grid/swin_nano_dimap_r0.5")


def test_bad_arguments_exit():
    with pytest.raises(SystemExit):
        sweep.main(["--dry-run"])
    with pytest.raises(SystemExit):
        sweep.main(["--table", "2", "--dry-run"])
    with pytest.raises(SystemExit):
        sweep.main(["--table", "1", "notanoverride"])
