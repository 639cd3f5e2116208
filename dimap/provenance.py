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


def portable(obj, root: str | Path | None = None):
    """`obj` (a JSON-like record) with machine-specific path prefixes replaced, so a committed record reads the
    same on every clone: paths inside the repository become relative to it, the temporary folder becomes
    `$TMPDIR` and the home folder `~`. Only the prefixes change; everything else is kept as it was."""
    import os
    import re
    import tempfile
    root = str(Path(root) if root is not None else Path(__file__).resolve().parent.parent)
    prefixes = [(root, "."), (os.path.realpath(tempfile.gettempdir()), "$TMPDIR"), (tempfile.gettempdir(), "$TMPDIR"),
                (os.path.expanduser("~"), "~")]
    prefixes = [(p.rstrip("/"), r) for p, r in prefixes if p not in ("", "/")]

    def fix(s: str) -> str:
        for prefix, repl in prefixes:
            # a prefix counts only where a path starts (start, space, '=', quote) and ends (/, end, space)
            pat = re.compile(r"(^|(?<=[\s=\"':,]))" + re.escape(prefix) + r"(?=/|$|[\s\"',])")
            s = pat.sub(repl, s)
        return re.sub(r"(^|(?<=[\s=\"':,]))\./(?=\S)", "", s)  # ./results/x -> results/x

    if isinstance(obj, str):
        return fix(obj)
    if isinstance(obj, Path):
        return fix(str(obj))
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, root) for v in obj]
    return obj
