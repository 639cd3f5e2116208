"""What produced a result: code version and library versions, stored with every record."""
import platform
import subprocess
from pathlib import Path


def git_commit() -> str:
    """The commit of this checkout, with '+dirty' when tracked files differ from it; 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    import timm
    import torch
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}
