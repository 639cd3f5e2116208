"""scripts/gpu_check.sh before its steps: a wheel folder that is no such folder, Pillow 13, another timm."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def preflight(tmp_path, *args, site: str = ""):
    """gpu_check.sh up to its steps: `--help` makes gpu_check.py exit at once once the checks pass. `site` is a
    sitecustomize run at every Python start, to make an installed package report another version."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site:
        (tmp_path / "sitecustomize.py").write_text(site)
        env["PYTHONPATH"] = str(tmp_path)
    bindir = tmp_path / "bin"  # python3 is this interpreter, as a user's PATH would give it
    bindir.mkdir(exist_ok=True)
    (bindir / "python3").symlink_to(sys.executable)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args, "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_everything_in_place_reaches_the_steps(tmp_path):
    r = preflight(tmp_path)
    assert r.returncode == 0 and "usage: gpu_check.py" in r.stdout and r.stderr == ""


def test_a_wheel_folder_without_wheels_is_one_sentence(tmp_path):
    (tmp_path / "wheels").mkdir()
    r = preflight(tmp_path, "--wheels", str(tmp_path / "wheels"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"error: --wheels {tmp_path / 'wheels'} holds no .whl file: build the folder with bash "
        f"scripts/build_wheels.sh {tmp_path / 'wheels'}"]


def test_pillow_13_is_refused_in_one_sentence(tmp_path):
    r = preflight(tmp_path, site="import PIL\nPIL.__version__ = '13.0.0'\n")
    assert r.returncode == 2 and "usage:" not in r.stdout
    # (the faked version also makes PIL.Image warn about its own extension first: the fake's doing, not the script's)
    assert r.stderr.strip().splitlines()[-1:] == [
        "error: Pillow 13.0.0 refuses posterize(bits=0), which the paper's RandAugment asks for: install "
        "pillow<13 (requirements.txt pins 12.3.0)"]


def test_another_timm_is_named_and_the_check_goes_on(tmp_path):
    r = preflight(tmp_path, site="import timm\ntimm.__version__ = '0.9.16'\n")
    assert r.returncode == 0 and "usage: gpu_check.py" in r.stdout
    assert r.stderr.strip().splitlines() == [
        "note: timm 0.9.16 here, requirements.txt pins 1.0.31: the check runs, but counts and timings are those "
        "of timm 0.9.16"]
