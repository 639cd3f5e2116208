"""Every experiment file composes with train.yaml into a config train.py accepts (no data, no training)."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dimap.pruning.masks import check_method, check_ratio
from dimap.training.recipe import resolve_batches, scaled_lrs

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(str(p.relative_to(ROOT / "conf" / "experiment").with_suffix(""))
                     for p in (ROOT / "conf" / "experiment").rglob("*.yaml"))
TRAIN_KEYS = {"epochs", "warmup_epochs", "batch_size", "accum_steps", "lr", "lr_base_batch", "min_lr", "warmup_lr",
              "weight_decay", "opt", "opt_eps", "sched", "clip_grad", "amp", "mixup", "cutmix", "smoothing", "ema",
              "ema_decay", "channels_last", "compile", "eval_batch_size", "resume", "validate_dense", "nonfinite",
              "num_workers", "global_batch", "max_skipped_steps", "eval_amp"}


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_plain_train_py_is_the_demo():
    cfg = compose_train()
    assert (cfg.model.short, cfg.data.name, cfg.prune.method, cfg.prune.ratio) == ("swin_nano_p4", "mnist5k", "dimap",
                                                                                   0.85)
    assert cfg.pretrain.epochs > 0 and cfg.train.amp == "none" and cfg.logger.enabled


def test_paper_recipe_is_the_papers():
    t = compose_train("experiment=table1/swin_t_dimap3").train
    assert (t.epochs, t.warmup_epochs, t.lr, t.min_lr, t.warmup_lr, t.weight_decay) == (30, 15, 2e-5, 2e-7, 2e-8, 1e-8)
    assert (t.opt, t.sched, t.mixup, t.cutmix, t.smoothing, t.clip_grad) == ("adamw", "cosine", 0.8, 1.0, 0.1, 5.0)
    assert scaled_lrs(t, 1024)["lr"] == pytest.approx(4e-5)  # 8 GPUs x 128, docs/method.md section 5
    one_gpu = resolve_batches(t, world_size=1)  # the README's 1-GPU command follows the recipe too
    assert (one_gpu.per_process, one_gpu.accum_steps, one_gpu.global_batch) == (128, 8, 1024)
    assert resolve_batches(t, world_size=8).global_batch == 1024 and not t.eval_amp


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    cfg = compose_train(f"experiment={name}")
    assert TRAIN_KEYS <= set(cfg.train), TRAIN_KEYS - set(cfg.train)
    if cfg.prune.method != "none":
        check_method(cfg.prune.method)
    check_ratio(cfg.prune.ratio)
    resolve_batches(cfg.train, world_size=8)
    assert cfg.output_dir and cfg.seed is not None and "epochs" in cfg.pretrain
    if cfg.data.name == "imagenet":
        assert cfg.pretrain.epochs == 0 and cfg.model.weights != "random"
