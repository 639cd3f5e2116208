"""train.py with train.epochs=0: evaluation-only runs say what they are, read pruned files as pruned, need no train/."""
from pathlib import Path

import pytest

import train
from tests.test_train_cli import TINY, run


def run_on_imagenet(out, *overrides):
    from hydra import compose, initialize_config_dir
    tiny = [o for o in TINY if not o.startswith("data.")]
    with initialize_config_dir(config_dir=str(Path(train.__file__).parent / "conf"), version_base="1.3"):
        return train.run(compose("train", overrides=[f"output_dir={out}", *tiny, *overrides]))


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory):
    """A DIMAP-pruned model file (r=0.5, no finetuning) as train.py writes it, and that run's summary."""
    out = tmp_path_factory.mktemp("pruned") / "run"
    summary = run(out, "train.epochs=0", "prune.ratio=0.5")
    return out / "model.safetensors", summary


def test_a_pruned_file_is_evaluated_as_pruned(pruned_file, tmp_path):
    path, pruned = pruned_file
    s = run(tmp_path / "eval", "train.epochs=0", "prune.ratio=0", f"model.weights={path}")
    # masks from the file's zeros, as prune=none reads them: the same model as the run that pruned it
    assert s["method"] == "none" and s["pruning"]["masks_from"] == "zeros of model.weights"
    assert s["pruning"]["weights_already_pruned"] and s["ratio"] == pytest.approx(pruned["ratio"], abs=1e-4)
    assert s["params_nonzero"] == pruned["params_nonzero"] and s["top1"] == pruned["top1"]
    assert s["flops_paper"] == pytest.approx(pruned["flops_paper"])


def test_a_dense_evaluation_is_not_recorded_as_a_pruning_run(tmp_path):
    s = run(tmp_path / "eval", "train.epochs=0", "prune.ratio=0")
    assert s["method"] == "none" and s["ratio"] == 0 and not s["pruning"]["weights_already_pruned"]
    assert s["params_nonzero"] == s["params_total"]
    from dimap.training.wandb_logger import table1_row
    assert table1_row(s)["variant"] == "dense"  # the wandb Table 1 row of a dense evaluation


def val_only_folder(root: Path, n: int = 3) -> Path:
    from PIL import Image
    for c in ("a", "b"):
        (root / "val" / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 40), (60 * i, 0, 0)).save(root / "val" / c / f"{i}.png")
    return root


def test_evaluation_needs_no_train_folder_nor_a_training_batch(tmp_path):
    root = val_only_folder(tmp_path / "imagenet")
    data = ["data=imagenet", f"data.root={root}", "data.img_size=32", "data.crop_pct=1.0",
                        "data.num_workers=0", "model.in_chans=3", "model.kwargs.in_chans=3",
                        "model.kwargs.num_classes=2", "train.batch_size=128"]
    s = run_on_imagenet(tmp_path / "eval", "train.epochs=0", "prune.ratio=0.5", *data)
    assert s["val_images"] == 6 and s["method"] == "dimap" and s["epochs"] == 0
    with pytest.raises(SystemExit):  # training still needs train/
        run_on_imagenet(tmp_path / "train", "train.epochs=1", "prune.ratio=0.5", *data)
