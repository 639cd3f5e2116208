"""scripts/slurm_local.sh: valid bash, and its refusals in one sentence (exit 2) before it touches anything."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"
BASH = shutil.which("bash")


def run(*args, env=None, user=None):
    cmd = [BASH, str(SCRIPT), *args]
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def test_is_valid_bash_and_names_its_commands():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    r = run("restart")
    assert r.returncode == 2 and r.stderr.strip().endswith("usage: " + str(SCRIPT) + " up|down|status")


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("runuser"), reason="root without runuser")
def test_refuses_without_root_in_one_sentence():
    r = run("up", user="nobody") if os.geteuid() == 0 else run("up")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("slurm_local: needs root (it installs packages and starts system daemons): "
                        "run it with sudo\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="the check after the root check: needs root")
def test_refuses_without_slurm_and_without_apt_get_in_one_sentence(tmp_path):
    (tmp_path / "id").symlink_to(shutil.which("id"))  # a PATH with neither Slurm, munge nor apt-get
    r = run("up", env={"PATH": str(tmp_path)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "there is no apt-get to install slurm-wlm and munge" in r.stderr


def test_status_without_slurm_says_so(tmp_path):
    r = run("status", env={"PATH": str(tmp_path)})
    assert r.returncode == 1 and "no Slurm installed (no sinfo)" in r.stdout
