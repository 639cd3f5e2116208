"""Online or offline, decided as wandb decides: WANDB_API_KEY, or the netrc entry `wandb login` writes."""
from dimap.training.wandb_logger import wandb_mode


def test_online_with_a_netrc_key_offline_without(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))  # no settings file with a key
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")  # as `wandb login` writes
    netrc.chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert wandb_mode() == "online" and wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() is None  # wandb reads WANDB_MODE itself


def _init_calls(monkeypatch):
    import wandb
    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or None)  # only where it would write
    return calls


def test_training_run_honours_wandb_dir_unless_logger_dir_is_set(tmp_path, monkeypatch):
    """As wandb does: $WANDB_DIR when set, else output_dir; an explicit logger.dir wins over both."""
    from dimap.training.wandb_logger import WandbLogger
    calls = _init_calls(monkeypatch)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    WandbLogger({"enabled": True}, {}, tmp_path / "run")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "env"))
    WandbLogger({"enabled": True, "dir": None}, {}, tmp_path / "run")
    WandbLogger({"enabled": True, "dir": str(tmp_path / "explicit")}, {}, tmp_path / "run")
    assert [c["dir"] for c in calls] == [str(tmp_path / "run"), str(tmp_path / "env"), str(tmp_path / "explicit")]
    assert (tmp_path / "env").is_dir() and (tmp_path / "explicit").is_dir()


def test_make_tables_wandb_honours_wandb_dir_unless_logger_dir_is_set(tmp_path, monkeypatch):
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "scripts"))
    from tables_wandb import logger_config, tables_dir
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert tables_dir(logger_config([])) == root / "outputs" / "tables"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "env"))
    assert tables_dir(logger_config([])) == tmp_path / "env"
    assert tables_dir(logger_config([f"logger.dir={tmp_path / 'explicit'}"])) == tmp_path / "explicit"
    assert tables_dir(logger_config(["logger.dir=wb"])) == root / "wb"  # relative: from the repository root


def test_a_run_finished_before_logger_dir_existed_is_still_its_own_config(tmp_path):
    """logger.dir came with a null default: a finished run's config without it is the same config; a value is not."""
    import json
    import pytest
    from dimap.errors import UserError
    from dimap.report import check_output_dir
    old = {"logger": {"enabled": True, "project": "dimap"}, "prune": {"ratio": 0.55}}
    (tmp_path / "summary.json").write_text(json.dumps({"config": old}))
    check_output_dir(tmp_path, {"logger": {"enabled": True, "project": "dimap", "dir": None}, "prune": {"ratio": 0.55}})
    with pytest.raises(UserError, match="differs in logger.dir"):
        check_output_dir(tmp_path, {"logger": {"enabled": True, "project": "dimap", "dir": "wb"},
                                    "prune": {"ratio": 0.55}})
