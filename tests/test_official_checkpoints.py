"""The authors' files in the official Swin training format: weights read without running pickled code."""
import sys

import pytest
import torch

from dimap import UserError
from dimap.models import build_model, read_state_dict
from tests.conftest import make_tiny_swin
from tests.test_models import cfg, to_official_layout


def official_config():
    """A yacs config built as the official Swin code's config.py builds one (nested nodes, lists, tuples, None)."""
    from yacs.config import CfgNode as CN
    c = CN()
    c.BASE = [""]
    c.DATA = CN()
    c.DATA.BATCH_SIZE, c.DATA.IMG_SIZE, c.DATA.INTERPOLATION, c.DATA.DATA_PATH = 128, 224, "bicubic", ""
    c.MODEL = CN()
    c.MODEL.TYPE, c.MODEL.NAME, c.MODEL.DROP_PATH_RATE, c.MODEL.RESUME = "swin", "swin_tiny", 0.2, None
    c.MODEL.SWIN = CN()
    c.MODEL.SWIN.DEPTHS, c.MODEL.SWIN.NUM_HEADS, c.MODEL.SWIN.PATCH_NORM = [2, 2, 6, 2], [3, 6, 12, 24], True
    c.TRAIN = CN()
    c.TRAIN.BASE_LR, c.TRAIN.EPOCHS, c.TRAIN.AUTO_RESUME = 2e-5, 30, True
    c.TRAIN.LR_SCHEDULER = CN()
    c.TRAIN.LR_SCHEDULER.NAME, c.TRAIN.LR_SCHEDULER.MULTISTEPS = "cosine", []
    c.TRAIN.OPTIMIZER = CN()
    c.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
    c.AUG = CN()
    c.AUG.MIXUP, c.AUG.CUTMIX_MINMAX, c.AUG.MIXUP_MODE = 0.8, None, "batch"
    c.freeze()
    return c


def save_checkpoint(model, path, config, epoch=29):
    """As the official utils.save_checkpoint writes one: model, optimizer, lr_scheduler, max_accuracy, scaler,
    epoch, config (after a real optimizer step, so the optimizer state holds tensors)."""
    from timm.scheduler import CosineLRScheduler
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=1e-8)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    scheduler = CosineLRScheduler(optimizer, t_initial=30, lr_min=2e-7, warmup_lr_init=2e-8, warmup_t=5)
    scaler = torch.amp.GradScaler("cpu")
    torch.save({"model": to_official_layout(model.state_dict()), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "max_accuracy": 80.35, "scaler": scaler.state_dict(),
                "epoch": epoch, "config": config}, path)


@pytest.fixture
def training_checkpoint(tmp_path):
    model = make_tiny_swin(seed=5)
    path = tmp_path / "ckpt_epoch_29.pth"
    save_checkpoint(model, path, official_config())
    return model.eval(), path


def test_official_training_checkpoint_loads(training_checkpoint):
    src, path = training_checkpoint
    with pytest.raises(Exception):  # what the plain weights-only load does with such a file
        torch.load(path, weights_only=True)
    model = build_model(cfg(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), src(x))


def test_yacs_is_not_needed_to_read_it(training_checkpoint, monkeypatch):
    _, path = training_checkpoint
    monkeypatch.setitem(sys.modules, "yacs", None)  # `import yacs` now fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "yacs.config", None)
    assert "layers.0.blocks.0.attn.qkv.weight" in read_state_dict(path)


class RunsCode:
    """A pickled object whose unpickling would run code (here: create a file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_other_pickled_classes_are_refused_without_running_them(tmp_path):
    path, marker = tmp_path / "odd.pth", tmp_path / "ran"
    torch.save({"model": make_tiny_swin().state_dict(), "extra": RunsCode(marker)}, path)
    with pytest.raises(UserError, match="without running their code.*re-save its weights") as e:
        read_state_dict(path)
    assert not marker.exists() and "download it again" not in str(e.value)


@pytest.mark.parametrize("content", [{"config": "official", "epoch": 3, "max_accuracy": 80.0}, {"model": {}}])
def test_a_file_without_weights_is_refused_with_the_right_advice(tmp_path, content):
    path = tmp_path / "no_weights.pth"
    torch.save({k: official_config() if v == "official" else v for k, v in content.items()}, path)
    with pytest.raises(UserError, match="holds no model weights") as e:
        read_state_dict(path)
    assert "download it again" not in str(e.value) and "'model'" in str(e.value)

