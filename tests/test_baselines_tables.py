"""The baseline experiment files (conf/experiment/baselines/) and the 'beyond the paper' table that fills from them."""
import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.test_make_tables import read_md, write_run  # noqa: E402
import make_tables  # noqa: E402  (tests.test_make_tables put scripts/ on the path)

FILES = sorted(p.stem for p in (ROOT / "conf/experiment/baselines").glob("*.yaml"))


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_every_model_method_and_ratio_has_a_file():
    assert FILES == sorted(f"{m}_{method}_{pct}" for m in ("swin_t", "swin_s", "swin_b")
                           for method in ("wanda", "wanda_module", "sparsegpt") for pct in (15, 35, 55))


@pytest.mark.parametrize("name", FILES)
def test_baseline_experiment_is_table1s_recipe_with_another_criterion(name):
    model, rest = name[:6], name[7:]
    method, pct = rest.rsplit("_", 1)
    cfg = compose_train(f"experiment=baselines/{name}")
    dimap = compose_train(f"experiment=table1/{model}_dimap{ {'15': 1, '35': 2, '55': 3}[pct]}")
    assert (cfg.model.short, cfg.prune.method, cfg.prune.ratio) == (model, method, int(pct) / 100)
    assert cfg.train == dimap.train and cfg.data == dimap.data and cfg.model == dimap.model  # the same finetune
    assert cfg.prune.calibration.images == 4096 and cfg.prune.calibration.seed == 0
    assert cfg.output_dir == f"results/runs/baselines/{name}"


def test_paper_sweep_lists_every_file():
    from omegaconf import OmegaConf
    listed = OmegaConf.load(ROOT / "conf/paper/baselines.yaml").hydra.sweeper.params.experiment
    assert sorted(e.strip() for e in listed.split(",")) == [f"baselines/{f}" for f in FILES]


def test_beyond_the_paper_table_fills_from_the_rows_own_runs(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "table1/swin_t_dimap3", "table1/swin_t_dimap3", top1=80.1, top5=95.0)
    write_run(runs, "baselines/swin_t_wanda_55", "baselines/swin_t_wanda_55", top1=79.4, top5=94.6,
              pruning={"method": "wanda", "ratio": 0.55, "weights_already_pruned": False, "prune_time_s": 41.7})
    summary = runs / "baselines/swin_t_wanda_55/summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "pruned_top1": 70.25}))
    # a smoke run with fewer calibration images is not the row's run
    write_run(runs, "smoke/swin_t_sparsegpt_55", "baselines/swin_t_sparsegpt_55", top1=81.0, top5=95.0,
              set_=[("prune.calibration.images", 64)])
    make_tables.main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--paper", str(ROOT / "results/paper")])
    t = read_md(tmp_path / "out/baselines.md")
    row = t[("Swin-T", "0.55")]
    assert (row["DIMAP finetuned"], row["DIMAP pruned"]) == ("80.10", "–")
    assert (row["Wanda pruned"], row["Wanda finetuned"], row["Wanda prune s"]) == ("70.25", "79.40", "42")
    assert row["SparseGPT finetuned"] == "–" and row["Wanda (module-aware) finetuned"] == "–"
    assert all(c == "–" for k, c in t[("Swin-B", "0.15")].items() if k not in ("Model", "r"))
    md = (tmp_path / "out/baselines.md").read_text()
    assert "refused `smoke/swin_t_sparsegpt_55`: other pruning settings (prune.calibration)" in md
    assert (tmp_path / "out/baselines.tex").is_file()
