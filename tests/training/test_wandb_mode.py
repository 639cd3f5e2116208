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
