"""conf/experiment/nm/*.yaml: each composes to the paper's finetuning recipe at 2:4, and its masks are 2:4."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.test_experiments import TIMM_NAMES, compose

CONF = Path(__file__).resolve().parents[1] / "conf"
NM = sorted(p.stem for p in (CONF / "experiment" / "nm").glob("*.yaml"))


def test_one_file_per_swin():
    assert NM == ["swin_b_2of4", "swin_s_2of4", "swin_t_2of4"]


@pytest.mark.parametrize("name", NM)
def test_nm_experiment_is_table1_dimap3_at_two_four(name):
    cfg, paper = compose(f"nm/{name}"), compose(f"table1/{name[:6]}_dimap3")
    assert cfg.model.name == TIMM_NAMES[name[:6]] and cfg.model.weights == "hub"
    assert (cfg.prune.method, cfg.prune.ratio, cfg.prune.pattern) == ("dimap", 0.5, "2:4")
    assert cfg.prune.nm_allocation == "auto" and cfg.prune.semi_structured is False
    # the same model, data and finetuning recipe as the paper's row (only the pruning differs)
    for key in ("model", "data", "train", "pretrain"):
        assert OmegaConf.to_container(cfg[key]) == OmegaConf.to_container(paper[key]), key
    assert cfg.output_dir == f"results/runs/nm/{name}" and (cfg.logger.group, cfg.logger.name) == ("nm", name)
