"""prune.pattern=N:M through prune.py and train.py: masks on disk, refusals, finetuning with the pattern intact."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dimap.pruning.patterns import layer_kind  # noqa: E402
from dimap.training.checkpoint import read_checkpoint  # noqa: E402
from tests.test_prune_cli import prune_cli  # noqa: E402
from tests.test_train_cli import interrupt_after_checkpoints, run, weights  # noqa: E402


def two_of_four(t: torch.Tensor) -> bool:
    """Exactly 2 non-zero... of every 4 consecutive input positions of a keep-mask (independent of layer_kind)."""
    return bool((t.reshape(t.shape[0], -1, 4).sum(-1) == 2).all())


@pytest.mark.slow
def test_swin_t_at_half_keeps_exactly_two_of_every_four_inputs(tmp_path):
    out = tmp_path / "p"
    r = prune_cli("model=swin_t", "model.weights=random", "prune=dimap", "prune.pattern=2:4", "prune.ratio=0.5",
                  f"output_dir={out}", "plot=false")
    assert r.returncode == 0, r.stderr
    masks = load_file(str(out / "masks.safetensors"))
    assert len(masks) == 48 and all(m.shape[1] % 4 == 0 and two_of_four(m) for m in masks.values())
    with safe_open(str(out / "masks.safetensors"), framework="pt") as f:
        assert f.metadata()["pattern"] == "2:4"
    s = json.loads((out / "summary.json").read_text())
    assert s["pattern"] == "2:4" and s["nm_layers"] == 48 and s["nm"]["ratio_achieved"] == 0.5
    assert "2:4      48 layers N:M, 0 dense" in r.stdout and "kernel FLOPs" in r.stdout


def test_quarter_gives_dense_or_two_four_layers_at_the_module_shares(tmp_path):
    out = tmp_path / "p"
    r = prune_cli("model=swin_nano", "prune=dimap", "prune.pattern=2:4", "prune.ratio=0.25", f"output_dir={out}",
                  "plot=false")
    assert r.returncode == 0, r.stderr
    masks = load_file(str(out / "masks.safetensors"))
    kinds = {n: "dense" if bool(m.all()) else "2:4" if two_of_four(m) else "other" for n, m in masks.items()}
    assert set(kinds.values()) == {"dense", "2:4"}
    s = json.loads((out / "summary.json").read_text())
    for module, m in s["modules"].items():
        assert m["kept_fraction"] <= 0.75 + 1e-12, module  # each module loses at least its asked share
    assert set(s["nm"]["nm_layers"]) == {n for n, k in kinds.items() if k == "2:4"}
    assert s["layers"][0]["kind"] in ("dense", "2:4") and s["ratio"] == 0.25
    assert s["nm"]["ratio_achieved"] == s["prunable_removed_fraction"] >= 0.25


@pytest.mark.parametrize("overrides, match", [
    (["prune.ratio=0.6"], "prune.ratio=0.6 is more than 2:4 sparsity can remove"),
    (["prune.nm_allocation=best", "prune.ratio=0.3"], "prune.nm_allocation='best' is unknown"),
    (["prune.semi_structured=true", "prune.ratio=0.5"], "2:4 sparse kernels need a CUDA GPU"),
])
def test_nm_refusals_are_one_sentence_exit_2_and_write_nothing(tmp_path, overrides, match):
    if "semi_structured" in overrides[0] and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the conversion is not refused here")
    r = prune_cli("model=swin_nano", "prune=dimap", "prune.pattern=2:4", f"output_dir={tmp_path / 'o'}", *overrides)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert match in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def check_two_four(state: dict, masks: dict) -> None:
    """Every pruned weight zero and every layer dense or 2:4 in the masks (the pattern holds)."""
    assert {layer_kind(m, 2, 4) for m in masks.values()} == {"dense", "2:4"}
    for name, m in masks.items():
        assert torch.all(state[name][~m] == 0), name


FINETUNE = ("prune.pattern=2:4", "prune.ratio=0.3", "train.epochs=2", "train.ema=true", "train.ema_decay=0.5",
            "train.clip_grad=0.1", "train.weight_decay=0.5", "train.opt=adamw")


def test_finetuning_keeps_two_four_with_adamw_clipping_ema_and_resume(tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    s = run(straight, *FINETUNE)
    masks = load_file(str(straight / "masks.safetensors"))
    check_two_four(weights(straight), masks)
    ckpt = read_checkpoint(straight / "checkpoints" / "last.pt")
    check_two_four(ckpt["model"], ckpt["masks"])
    check_two_four(ckpt["ema"], ckpt["masks"])
    assert ckpt["config"]["prune"]["pattern"] == "2:4" and ckpt["results"]["pruning"]["pattern"] == "2:4"
    assert s["pattern"] == "2:4" and s["pruning"]["nm"]["allocation"] == "module" and s["nm_layers"] > 0
    interrupt_after_checkpoints(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(resumed, *FINETUNE)
    monkeypatch.undo()
    run(resumed, *FINETUNE)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    check_two_four(b, load_file(str(resumed / "masks.safetensors")))


def test_train_refuses_a_ratio_two_four_cannot_reach(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "o", "prune.pattern=2:4", "prune.ratio=0.6")
    assert e.value.code == 2 and "more than 2:4 sparsity can remove" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
