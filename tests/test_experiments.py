"""Every paper experiment file composes with train.yaml and resolves to the paper's settings."""
import re
from pathlib import Path

import pytest
import torch

from dimap.pruning.criteria import n_removed
from dimap.pruning.modules import modules_of, prunable_weights

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.relative_to(CONF / "experiment").with_suffix("").as_posix()
                     for p in (CONF / "experiment").glob("table*/*.yaml"))
TIMM_NAMES = {"swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224",
              "swin_b": "swin_base_patch4_window7_224"}
# Official Swin finetuning configs (configs/swin/*_22kto1k_finetune.yaml), not the from-scratch 0.2 / 0.3 / 0.5
DRIFT_PATH = {"swin_t": 0.1, "swin_s": 0.2, "swin_b": 0.2}


def compose(name: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=[f"experiment={name}"])


def expected(name: str) -> dict:
    """What the paper says each row is: model, method, ratio, finetuned or not."""
    table, row = name.split("/")
    model = row[:6]
    if m := re.fullmatch(r"swin_[tsb]_dimap([123])", row):
        return dict(model=model, method="dimap", ratio=(0.15, 0.35, 0.55)[int(m[1]) - 1], epochs=30)
    if row.endswith("_dense"):
        return dict(model=model, method="dimap", ratio=0.0, epochs=0)
    if row.endswith("_single_module"):
        return dict(model=model, method="single_module", ratio=0.55, epochs=30)
    m = re.fullmatch(r"swin_[tsb]_(uniform|dimap)_(19|28|38|50)(_prunable)?", row)
    assert m and table == "table3", f"unexpected experiment file {name}"
    # first reading (share of all parameters): see test_table3_ratio_maps_share; second: the share itself
    return dict(model=model, method=m[1], ratio=int(m[2]) / 100 if m[3] else None, epochs=0)


def test_all_paper_rows_have_a_file():
    counts = {t: sum(n.startswith(t + "/") for n in EXPERIMENTS) for t in ("table1", "table3", "table4")}
    assert counts == {"table1": 9 + 3, "table3": 3 * 2 * 4 * 2, "table4": 3}  # Table 3: both readings


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_to_paper_settings(name):
    cfg, want = compose(name), expected(name)
    assert cfg.model.short == want["model"] and cfg.model.name == TIMM_NAMES[want["model"]]
    assert cfg.model.weights == "hub" and cfg.model.hub_tag == "ms_in1k"  # ImageNet-1k weights, not the 22k ones
    assert cfg.model.drop_path_rate == DRIFT_PATH[want["model"]]
    assert cfg.prune.method == want["method"]
    if want["ratio"] is not None:
        assert cfg.prune.ratio == want["ratio"]
    assert cfg.data.name == "imagenet" and cfg.data.crop_pct == 0.875
    t = cfg.train  # the paper's finetuning recipe (docs/method.md, section 5)
    assert t.epochs == want["epochs"]
    assert (t.lr, t.min_lr, t.warmup_lr, t.warmup_epochs, t.weight_decay) == (2e-5, 2e-7, 2e-8, 15, 1e-8)
    assert (t.opt, t.sched, t.lr_base_batch, t.batch_size) == ("adamw", "cosine", 512, 128)
    assert (t.mixup, t.cutmix, t.smoothing, t.clip_grad) == (0.8, 1.0, 0.1, 5.0)
    assert cfg.data.aug.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.data.aug.re_prob == 0.25
    assert cfg.pretrain.epochs == 0  # the demo's dense pretraining must not leak in
    assert cfg.output_dir == f"results/runs/{name}"
    assert (cfg.logger.group, cfg.logger.name) == tuple(name.split("/"))


@pytest.fixture(scope="module")
def true_counts():
    """(all parameters, prunable weights per module) of Swin-T/S/B, built on the meta device (no memory, fast)."""
    import timm
    counts = {}
    for short, name in TIMM_NAMES.items():
        with torch.device("meta"):
            model = timm.create_model(name)
        weights = prunable_weights(model)
        counts[short] = (sum(p.numel() for p in model.parameters()),
                         [sum(weights[n].numel() for n in names) for names in modules_of(weights).values()])
    return counts


def test_true_counts_match_the_paper(true_counts):
    assert {k: v[0] for k, v in true_counts.items()} == {"swin_t": 28288354, "swin_s": 49606258, "swin_b": 87768224}


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.startswith("table3/") and not n.endswith("_prunable")])
def test_table3_ratio_maps_share(name, true_counts):
    """The paper's Table 3 share is of ALL parameters; the per-module ratio in the file must remove that share
    (within 0.05 percentage points), counting exactly what the criteria remove per module."""
    from omegaconf import OmegaConf
    share = int(name.rsplit("_", 1)[1])
    ratio = OmegaConf.load(CONF / "experiment" / f"{name}.yaml").prune.ratio
    total, modules = true_counts[name.split("/")[1][:6]]
    removed = sum(n_removed(n, ratio) for n in modules)
    assert abs(100 * removed / total - share) < 0.05
    assert f"r = {share / 100:.2f} x {total:,}" in (CONF / "experiment" / f"{name}.yaml").read_text()


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.endswith("_prunable")])
def test_table3_second_reading_states_its_share_of_all_parameters(name, true_counts):
    """Second reading: the label is the share of the prunable weights; the file states what that removes of all."""
    from omegaconf import OmegaConf
    share = int(name.split("_")[-2])
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert OmegaConf.load(CONF / "experiment" / f"{name}.yaml").prune.ratio == share / 100
    total, modules = true_counts[name.split("/")[1][:6]]
    if "_dimap_" in name:  # uniform removes per layer: its count is checked by the criteria tests
        removed = sum(n_removed(n, share / 100) for n in modules)
        assert f"{removed:,} weights,\n# {100 * removed / total:.3f}% of all parameters" in text
    assert f"table3/{name.split('/')[1].removesuffix('_prunable')}." in text  # points at the first reading
