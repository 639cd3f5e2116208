"""prune.py end to end: what it writes, and how it refuses bad input without destroying anything."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import prune  # noqa: E402
from tests.families import FAMILIES, family_params  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def prune_cli(*overrides, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "prune.py"), *overrides], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def compose_prune(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("prune", overrides=list(overrides))


def test_prune_writes_summary_model_masks_and_plot(tmp_path):
    out = tmp_path / "run"
    r = prune_cli("model=swin_nano", "prune=dimap", "prune.ratio=0.5", f"output_dir={out}")
    assert r.returncode == 0, r.stderr
    assert "MLP-M" in r.stdout and "paper-style" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    for key in ("params_total", "params_nonzero", "params_reduction_pct", "flops_dense", "flops_paper",
                "flops_paper_reduction_pct", "flops_sparse", "flops_sparse_reduction_pct", "modules", "layers",
                "git_commit", "config"):
        assert key in s, key
    assert (s["model"], s["method"], s["ratio"], s["weights"]) == ("swin_tiny_patch4_window7_224", "dimap", 0.5,
                                                                   "random")
    assert all(abs(m["kept_fraction"] - 0.5) < 1e-3 for m in s["modules"].values())
    for f in ("model.safetensors", "masks.safetensors", "kept_fraction.png"):
        assert (out / f).is_file(), f
    assert not (out / ".hydra").exists()


def test_bad_ratio_exits_with_one_sentence_and_destroys_nothing(tmp_path):
    (tmp_path / "summary.json").write_text('{"keep": "me"}')
    r = prune_cli("model=swin_nano", "prune.ratio=1.0", f"output_dir={tmp_path}")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "prune.ratio=1.0" in r.stderr
    assert [l for l in r.stderr.splitlines() if l.startswith("error:")] == [r.stderr.strip().splitlines()[-1]]
    assert (tmp_path / "summary.json").read_text() == '{"keep": "me"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


@pytest.mark.parametrize("overrides, match", [
    (["prune.ratio=-0.1"], "prune.ratio"),
    (["prune.ratio=abc"], "prune.ratio"),
    (["prune.method=magnitude"], "prune.method"),
    (["model.weights=/nonexistent/w.pth"], "is not a file"),
    (["model.weights=hub", "model.hub_tag=ms_in1k", "model=swin_t"], "model.weights=PATH"),
])
def test_bad_input_is_refused(tmp_path, capsys, overrides, match):
    import prune
    cfg = compose_prune("model=swin_nano", f"output_dir={tmp_path}", *overrides)
    with pytest.raises(SystemExit) as e:
        prune.run(cfg)
    assert e.value.code == 2
    assert match in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_output_dir_of_a_different_finished_run_is_refused(tmp_path, capsys):
    import prune
    prune.run(compose_prune("model=swin_nano", "prune.ratio=0.3", f"output_dir={tmp_path}", "plot=false"))
    before = (tmp_path / "summary.json").read_text()
    prune.run(compose_prune("model=swin_nano", "prune.ratio=0.3", f"output_dir={tmp_path}", "plot=false"))  # same: fine
    with pytest.raises(SystemExit):
        prune.run(compose_prune("model=swin_nano", "prune.ratio=0.4", f"output_dir={tmp_path}", "plot=false"))
    assert "different config" in capsys.readouterr().err
    assert json.loads((tmp_path / "summary.json").read_text())["ratio"] == 0.3
    assert json.loads(before)["config"] == json.loads((tmp_path / "summary.json").read_text())["config"]


def _kwargs_overrides(kwargs: dict) -> list[str]:
    """+model.kwargs.KEY=VALUE for Hydra's command line (the family configs have empty kwargs)."""
    def value(v):
        return "[" + ",".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else str(v)
    return [f"+model.kwargs.{k}={value(v)}" for k, v in kwargs.items()]


@pytest.mark.parametrize("family", family_params())
def test_prune_every_family_with_its_config(family, tmp_path):
    """`prune.py model=<family> prune=dimap prune.ratio=0.55 model.weights=random` at test size, in process."""
    kwargs, img_size, layer_counts = FAMILIES[family]
    cfg = compose_prune(f"model={family}", "prune=dimap", "prune.ratio=0.55", "model.weights=random", "plot=false",
                        *_kwargs_overrides(kwargs), f"model.img_size={img_size}", f"output_dir={tmp_path}")
    s = prune.run(cfg)
    assert s["model"] == cfg.model.name and (tmp_path / "model.safetensors").is_file()
    assert [sum(l["module"] == m for l in s["layers"]) for m in ("QKV-M", "PRJ-M", "MLP-M")] == \
        list(layer_counts(kwargs))
    assert all(abs(m["kept_fraction"] - 0.45) < 2e-3 for m in s["modules"].values())
    assert s["flops_sparse"] < s["flops_dense"] and s["flops_paper"] < s["flops_dense"]


def test_fastervit_without_its_package_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastervit", None)  # what an environment without the package sees
    from dimap.models import create_model
    from dimap.errors import UserError
    with pytest.raises(UserError, match=r"needs the optional package 'fastervit': pip install fastervit==1.0.0"):
        create_model("faster_vit_0_224")
