"""What commands say and leave behind: each message names the right knob, a refused run leaves no
folder, prune.py is reproducible with random weights, a group typo is one sentence, and no noise."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dimap.errors import check_config_groups
from dimap.training.data import capped_workers
from tests.pruning.test_inspect import KWARGS, inspect_cfg
from tests.conftest import make_tiny_swin
from tests.test_prune_cli import compose_prune
from tests.test_train_cli import run as train_run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}  # warnings NOT silenced: they must not show


def test_prune_cli_refusal_leaves_no_folder_and_prints_one_sentence_without_warnings(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, str(ROOT / "prune.py"), "model=swin_nano", "prune.ratio=2",
                           f"output_dir={out}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == ["error: prune.ratio=2 is not a share in [0, 1): pass e.g. "
                                                "prune.ratio=0.55"]  # no torch.jit.script FutureWarning


def test_a_config_group_typo_is_one_sentence_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        check_config_groups(ROOT / "conf", ["model=swin_t", "prune=foo"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: prune=foo names no file conf/prune/foo.yaml") and "dimap" in err
    with pytest.raises(SystemExit):
        check_config_groups(ROOT / "conf", ["-m", "model=swin_t,swin_q"])
    check_config_groups(ROOT / "conf", ["model=swin_t,swin_s", "experiment=table1/swin_t_dimap3", "prune.ratio=0.5",
                                        "~experiment", "+foo=1", "logger=none", "hydra.verbose=true"])


def test_prune_random_weights_are_seeded(tmp_path):
    import prune
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        prune.run(compose_prune("model=swin_nano", "model.weights=random", f"seed={seed}", "plot=false",
                                f"output_dir={tmp_path / name}"))
    a, b, c = (load_file(str(tmp_path / n / "masks.safetensors")) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_different_finished_run_names_the_dotted_key(tmp_path, capsys):
    import prune
    prune.run(compose_prune("model=swin_nano", "prune.ratio=0.3", f"output_dir={tmp_path}", "plot=false"))
    with pytest.raises(SystemExit):
        prune.run(compose_prune("model=swin_nano", "prune.ratio=0.4", f"output_dir={tmp_path}", "plot=false"))
    assert "(differs in prune.ratio)" in capsys.readouterr().err


def test_compare_dense_hub_offline_names_prune_compare_dense(tmp_path, monkeypatch, capsys):
    import prune
    from dimap import models
    model = make_tiny_swin(seed=1, **KWARGS)
    torch.save(model.state_dict(), tmp_path / "pruned.pth")
    monkeypatch.setattr(models, "_hub_cached", lambda cfg: False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(SystemExit) as e:
        prune.run(inspect_cfg(tmp_path / "pruned.pth", tmp_path / "out", "prune.compare_dense=hub"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pass prune.compare_dense=PATH" in err and "model.weights" not in err


def test_epochs_0_does_not_claim_a_log_or_checkpoints(tmp_path, capsys):
    train_run(tmp_path / "run", "train.epochs=0")
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1 and "log.jsonl" not in wrote[0] and "checkpoints/" not in wrote[0]
    assert not (tmp_path / "run" / "log.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_workers_are_capped_at_the_cpus_available(capsys):
    cpus = len(os.sched_getaffinity(0))
    assert capped_workers(cpus + 6) == cpus and f"capped at {cpus}" in capsys.readouterr().out
    assert capped_workers(0) == 0 and capped_workers(1) == 1
    assert capped_workers(64, world_size=2 * cpus) == 1  # never below one worker per process

