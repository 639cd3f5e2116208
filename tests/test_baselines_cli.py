"""prune.py and train.py with the data-aware baselines (prune=wanda, wanda_module, sparsegpt): what they write,
that the removed share is exact (per output row for Wanda), and the refusals."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dimap.models import build_model  # noqa: E402
from dimap.pruning.removal_count import n_removed  # noqa: E402
from tests.test_prune_cli import ENV, compose_prune  # noqa: E402
from tests.test_train_cli import run as train_run  # noqa: E402


def prune_cli(*overrides):
    return subprocess.run([sys.executable, str(ROOT / "prune.py"), *overrides], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=900)


def dense_swin_nano():
    torch.manual_seed(0)  # prune.py's seed: the same random weights
    return build_model(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/swin_nano.yaml")))


def test_prune_wanda_writes_exact_per_row_masks(tmp_path):
    r = prune_cli("model=swin_nano", "prune=wanda", "prune.ratio=0.5", "data=mnist5k", "prune.calibration.images=48",
                  "plot=false", f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert (s["method"], s["ratio"]) == ("wanda", 0.5)
    assert s["calibration"] == {"images": 48, "requested": 48, "seed": 0, "split": "train", "transform": "evaluation",
                                "batch_size": 256}
    assert s["prune_time_s"] > 0
    masks, sd = load_file(str(tmp_path / "masks.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    dense = dense_swin_nano().state_dict()
    assert len(masks) == 32
    for n, m in masks.items():
        assert (~m).sum(1).tolist() == [n_removed(m.shape[1], 0.5)] * m.shape[0], n
        assert torch.equal(sd[n], dense[n] * m), n  # Wanda removes and updates nothing else


def test_prune_sparsegpt_writes_exact_masks_and_updated_weights(tmp_path):
    r = prune_cli("model=swin_nano", "prune=sparsegpt", "prune.ratio=0.5", "data=mnist5k",
                  "prune.calibration.images=16", "plot=false", f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["calibration"]["images"] == 16 and s["config"]["prune"]["blocksize"] == 128
    masks, sd = load_file(str(tmp_path / "masks.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    dense = dense_swin_nano().state_dict()
    for n, m in masks.items():
        assert int((~m).sum()) == n_removed(m.numel(), 0.5), n
        assert not sd[n][~m].any()
        assert not torch.equal(sd[n][m], dense[n][m]), n  # the kept weights were updated


def test_data_aware_method_without_data_is_one_sentence(tmp_path):
    r = prune_cli("model=swin_nano", "prune=wanda", f"output_dir={tmp_path}")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: prune.method=wanda needs calibration images from a training split: add a data group, e.g. "
        "data=mnist5k, or data=imagenet data.root=/path/to/imagenet"]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("overrides, match", [
    (["model=swin_t", "data=mnist5k"], "pick the matching model and data"),
    (["model=swin_t", "data=imagenet", "data.root=/nonexistent"], "has no train/ folder"),
    (["model=swin_nano", "data=mnist5k", "prune.calibration.images=0"], "prune.calibration.images=0"),
])
def test_bad_calibration_input_is_refused(tmp_path, capsys, overrides, match):
    import prune
    cfg = compose_prune("prune=wanda", f"output_dir={tmp_path}", *overrides)
    with pytest.raises(SystemExit) as e:
        prune.run(cfg)
    assert e.value.code == 2 and match in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_data_free_methods_need_no_data(tmp_path):
    import prune
    s = prune.run(compose_prune("model=swin_nano", "prune=dimap", "plot=false", f"output_dir={tmp_path}"))
    assert "calibration" not in s and s["prune_time_s"] >= 0


@pytest.mark.parametrize("method", ["wanda", "wanda_module", "sparsegpt"])
def test_train_finetunes_from_the_data_aware_masks(tmp_path, method):
    s = train_run(tmp_path / "run", f"prune={method}", "prune.ratio=0.6", "prune.calibration.images=20",
                  "train.epochs=1")
    assert s["method"] == method and s["pruning"]["calibration"]["images"] == 20
    masks, sd = load_file(str(tmp_path / "run/masks.safetensors")), load_file(str(tmp_path / "run/model.safetensors"))
    groups = {"wanda": [], "sparsegpt": [[n] for n in masks],
              "wanda_module": [[n for n in masks if k in n] for k in (".qkv.", ".proj.", ".mlp.")]}[method]
    for names in groups:
        assert sum(int((~masks[n]).sum()) for n in names) == n_removed(sum(masks[n].numel() for n in names), 0.6)
    if method == "wanda":
        assert all((~m).sum(1).eq(n_removed(m.shape[1], 0.6)).all() for m in masks.values())
    assert all(not sd[n][~m].any() for n, m in masks.items())  # finetuned with the mask held


@pytest.mark.slow
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_the_documented_command_with_default_calibration(tmp_path, method):
    """`python prune.py model=swin_nano prune=METHOD prune.ratio=0.5 data=mnist5k`, as docs/baselines.md shows it:
    all 4000 training images (4096 asked for), exact shares."""
    r = prune_cli("model=swin_nano", f"prune={method}", "prune.ratio=0.5", "data=mnist5k", "plot=false",
                  f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert (s["calibration"]["images"], s["calibration"]["requested"]) == (4000, 4096)
    masks = load_file(str(tmp_path / "masks.safetensors"))
    for m in masks.values():
        if method == "wanda":
            assert ((~m).sum(1) == n_removed(m.shape[1], 0.5)).all()
        assert int((~m).sum()) == (m.shape[0] * n_removed(m.shape[1], 0.5) if method == "wanda"
                                   else n_removed(m.numel(), 0.5))


@pytest.mark.slow
def test_two_processes_prune_once_and_share(tmp_path):
    """Under torchrun, rank 0 alone calibrates and prunes; every rank gets the same masks (train.py checks their
    checksums) and finetunes from SparseGPT's updated weights."""
    import os
    from tests.test_train_cli import TINY
    out = tmp_path / "run"
    env = {**ENV, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "train.py"), *TINY, "prune=sparsegpt", "prune.ratio=0.5",
                        "prune.calibration.images=12", "train.epochs=1", f"output_dir={out}",
                        f"paths.cache_dir={tmp_path / 'cache'}"],
                       cwd=tmp_path, env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["pruning"]["calibration"]["images"] == 12
    assert f"masks identical on 2 rank(s): checksum {s['mask_checksum']}" in r.stdout


def test_prune_wanda_at_2of4_and_sparsegpt_refusing_a_partial_2of4(tmp_path):
    r = prune_cli("model=swin_nano", "prune=wanda", "prune.pattern=2:4", "prune.ratio=0.5", "data=mnist5k",
                  "prune.calibration.images=16", "plot=false", f"output_dir={tmp_path / 'w'}")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert s["pattern"] == "2:4" and s["nm"]["dense_layers"] == [] and s["calibration"]["images"] == 16
    for name, m in load_file(str(tmp_path / "w" / "masks.safetensors")).items():
        assert bool((m.reshape(m.shape[0], -1, 4).sum(-1) == 2).all()), name
    r = prune_cli("model=swin_nano", "prune=sparsegpt", "prune.pattern=2:4", "prune.ratio=0.3", "data=mnist5k",
                  f"output_dir={tmp_path / 's'}")
    assert r.returncode == 2 and "pass prune.ratio=0.5" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()
