"""scripts/replicate_nm.py end to end with tiny settings: the rows, the identical 0.5 masks, seeds read back."""
import csv
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "replicate_nm.py"
TINY = ["--dense-epochs", "1", "--finetune-epochs", "1", "--threads", "1", "train.max_steps_per_epoch=1",
        "data.val_size=50", "model.kwargs.embed_dim=12", "model.kwargs.num_heads=[1,2,2,4]",
        "model.kwargs.depths=[1,1,1,1]"]


def load():
    spec = importlib.util.spec_from_file_location("replicate_nm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_rows_and_read_back(tmp_path, capsys):
    out, cache = tmp_path / "nm", tmp_path / "cache"
    args = ["--seeds", "0", "--ratios", "0.25", "0.5", "--out", str(out), "--cache-dir", str(cache), *TINY]
    load().main(args)
    rows = list(csv.DictReader(open(out / "rows.csv")))
    assert [(r["ratio"], r["criterion"], r["pattern"], r["allocation"], r["finetuned"]) for r in rows] == [
        ("0.25", "dimap", "unstructured", "-", "no"), ("0.25", "dimap", "unstructured", "-", "yes"),
        ("0.25", "dimap", "2:4", "module", "no"), ("0.25", "dimap", "2:4", "module", "yes"),
        ("0.25", "dimap", "2:4", "first", "no"), ("0.25", "global_magnitude", "2:4", "global", "no"),
        ("0.5", "dimap", "unstructured", "-", "no"), ("0.5", "dimap", "unstructured", "-", "yes"),
        ("0.5", "dimap", "2:4", "module", "no"), ("0.5", "dimap", "2:4", "module", "yes"),
        ("0.5", "global_magnitude", "2:4", "global", "no"), ("0.5", "global_magnitude", "2:4", "global", "yes")]
    assert all(r["pattern_intact"] == "True" for r in rows)
    assert rows[-1]["same_masks_as"] == "dimap 2:4" and rows[-1]["mask_checksum"] == rows[-3]["mask_checksum"]
    assert float(rows[2]["ratio_achieved"]) >= 0.25 and float(rows[8]["ratio_achieved"]) == 0.5
    meta = json.loads((out / "rows.json").read_text())
    assert meta["dense"][0]["config"]["paths"]["cache_dir"] == "$DIMAP_CACHE" and str(tmp_path) not in \
        json.dumps(meta["dense"])
    capsys.readouterr()
    load().main(args)  # the same command again: seed 0 is read back, not rerun
    assert "seed 0: read back" in capsys.readouterr().out
    assert list(csv.DictReader(open(out / "rows.csv"))) == rows
