"""Records keep paths relative to the clone: dimap.provenance.portable changes path prefixes and nothing else."""
import argparse
import os
import sys
import tempfile
from pathlib import Path

from dimap.provenance import portable

ROOT = Path(__file__).resolve().parents[1]


def test_portable_rewrites_prefixes_only():
    tmp, home = tempfile.gettempdir(), os.path.expanduser("~")
    record = {"out": str(ROOT / "results" / "bench"), "root": str(ROOT), "cache": Path(ROOT / ".cache" / "x.pt"),
              "command": f"python scripts/x.py --out {ROOT}/results/demo --root={tmp}/tmpab12",
              "work": f"{tmp}/tmpab12", "conf": f"{home}/.config/x", "numbers": [1, 2.5, None, True],
              "other": "/path/to/imagenet", "nested": {"dirs": [str(ROOT / "a")]}}
    near = portable(f"{ROOT}x/y", ROOT)  # a sibling folder whose name starts with the clone's is not inside it
    assert near.endswith(f"{ROOT.name}x/y") and not near.startswith(("x/", "./"))
    assert portable(record, ROOT) == {
        "out": "results/bench", "root": ".", "cache": ".cache/x.pt",
        "command": "python scripts/x.py --out results/demo --root=$TMPDIR/tmpab12",
        "work": "$TMPDIR/tmpab12", "conf": "~/.config/x" if home not in (str(ROOT), tmp) else f"{home}/.config/x",
        "numbers": [1, 2.5, None, True], "other": "/path/to/imagenet", "nested": {"dirs": ["a"]}}


def test_benchmark_records_hold_no_absolute_path():
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_masks import record
    args = argparse.Namespace(out=ROOT / "results" / "bench", seed=0, root=str(ROOT / "outputs" / "imgs"))
    rec = record("masks", args, {"dimap_s": 1.25}, "cpu")
    assert rec["config"]["out"] == "results/bench" and rec["config"]["root"] == "outputs/imgs"
    assert rec["results"] == {"dimap_s": 1.25} and str(ROOT) not in repr(rec)
