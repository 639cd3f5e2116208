"""Dense weights: local files in every supported format, the offline hub path, and files that are wrong."""
import time

import pytest
import torch
from safetensors.torch import save_file

from dimap import UserError
from dimap.models import build_model, load_dense_weights, read_state_dict
from tests.conftest import TINY_SWIN, make_tiny_swin

NAME = "swin_tiny_patch4_window7_224"


def cfg(weights, **kw):
    return {"name": NAME, "kwargs": {**TINY_SWIN, **kw}, "weights": str(weights), "hub_tag": "ms_in1k"}


def to_official_layout(sd):
    """Microsoft's Swin layout: downsample at the end of a stage, classifier named head.weight."""
    import re
    out = {}
    for k, v in sd.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    return out


@pytest.mark.parametrize("fmt", ["timm_pth", "safetensors", "official"])
def test_local_weights_round_trip(tmp_path, fmt):
    src = make_tiny_swin(seed=3).eval()
    sd = src.state_dict()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "official":
        torch.save({"model": to_official_layout(sd), "epoch": 299}, path)
    else:
        torch.save(sd, path)
    model = build_model(cfg(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), src(x))


def test_offline_hub_fails_fast_with_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(UserError, match="model.weights=PATH"):
        load_dense_weights(make_tiny_swin(), "hub", NAME, "ms_in1k")
    assert time.perf_counter() - start < 5


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        read_state_dict(tmp_path / "nope.pth")


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="could not be read as a checkpoint"):
        read_state_dict(path)


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(make_tiny_swin(depths=(1, 1, 1, 1)).state_dict(), path)
    with pytest.raises(UserError, match="does not fit"):
        build_model(cfg(path))


def test_unknown_timm_model():
    with pytest.raises(UserError, match="model.name"):
        build_model({"name": "swin_nonexistent", "weights": "random"})
