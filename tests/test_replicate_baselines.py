"""scripts/replicate_baselines.py: DIMAP's and magnitude's finetuned rows are borrowed from the main replication only
for dense models that are the very same files, and the seconds table never counts borrowed rows."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import replicate_baselines as rb  # noqa: E402


def row(criterion, seed, finetuned="yes", table="table4", ratio=0.925, top1=90.0, **extra):
    return dict(table=table, criterion=criterion, seed=seed, ratio=ratio, finetuned=finetuned, top1=top1, **extra)


def test_beside_takes_only_the_same_dense_files(tmp_path):
    other = {"dense": [{"seed": 0, "cache": "/somewhere/pretrain/swin_nano_aaaa.pt"},
                       {"seed": 1, "cache": "/somewhere/pretrain/swin_nano_OLD.pt"}],
             "rows": [row("dimap", 0), row("global_magnitude", 0, "no"), row("dimap", 1),  # seed 1: other dense
                      row("dimap", 0, table="table3"), row("single_module", 0), row("wanda", 0)]}
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(other))
    ours = [{"seed": 0, "cache": "swin_nano_aaaa.pt"}, {"seed": 1, "cache": "swin_nano_bbbb.pt"}]
    got = rb.beside([row("global_magnitude", 0, "no", top1=1.0)], ours, path)
    assert [(r["criterion"], r["seed"], r["finetuned"]) for r in got] == [("dimap", 0, "yes")]
    assert got[0]["source"] == "rows.json"
    assert rb.beside([], ours, tmp_path / "missing.json") == []


def test_seconds_ignore_borrowed_rows():
    rows = [row("dimap", 0, "no", prune_s=0.2), row("dimap", 0, "no", prune_s=0.4),
            row("dimap", 1, "no", source="results/demo/rows.json")]
    assert "| dimap | 0.30 | 0.20 | 0.40 |" in rb.prune_seconds(rows)
