"""scripts/replicate_demo.py end to end with tiny settings: rows, share-to-ratio mapping, skipped shares, outputs."""
import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "replicate_demo.py"


@pytest.fixture(scope="module")
def replicate():
    spec = importlib.util.spec_from_file_location("replicate_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_for_share(replicate):
    assert replicate.ratio_for_share(50, 1000, 800) == pytest.approx(0.625)
    assert replicate.ratio_for_share(80, 1000, 800) is None  # r = 1 would remove every prunable weight
    assert replicate.ratio_for_share(95, 1000, 800) is None


def test_tiny_run_writes_rows_summary_and_plot(replicate, tmp_path):
    out = tmp_path / "demo"
    meta = replicate.main([
        "--seeds", "0", "--dense-epochs", "1", "--shares", "50", "99", "--criteria", "uniform", "dimap",
        "--finetune-criteria", "dimap", "single_module", "--finetune-ratios", "0.55", "--finetune-epochs", "1",
        "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
        "train.max_steps_per_epoch=2", "data.val_size=100", "model.kwargs.embed_dim=12",
        "model.kwargs.num_heads=[1,2,2,4]", "model.kwargs.depths=[1,1,1,1]"])

    rows = list(csv.DictReader(open(out / "rows.csv")))
    assert [(r["table"], r["criterion"], r["finetuned"]) for r in rows] == [
        ("table3", "uniform", "no"), ("table3", "dimap", "no"),
        ("table4", "dimap", "no"), ("table4", "dimap", "yes"),
        ("table4", "single_module", "no"), ("table4", "single_module", "yes")]
    total, prunable = int(rows[0]["params_total"]), int(rows[0]["prunable_weights"])
    for r in rows[:2]:  # the ratio removes 50% of ALL parameters, to within rounding per module
        assert float(r["ratio"]) == pytest.approx(0.5 * total / prunable, abs=1e-6)
        assert float(r["params_removed_pct"]) == pytest.approx(50, abs=0.01)
        assert int(r["params_nonzero"]) == pytest.approx(total / 2, abs=20)  # rounding per layer or module
    assert all(float(r["ratio"]) == 0.55 for r in rows[2:])
    assert {r["dense_steps"] for r in rows} == {"2"} and {r["seed"] for r in rows} == {"0"}
    for r in rows:  # whole counts of the 100 validation images, top-5 at least top-1
        assert float(r["top1"]) == int(float(r["top1"])) and float(r["top1"]) <= float(r["top5"]) <= 100
    assert len({(r["dense_top1"], r["dense_top5"]) for r in rows}) == 1  # one dense model behind every row
    for pruned, tuned in (rows[2:4], rows[4:6]):  # finetuning keeps the mask: the same weights stay zero
        assert pruned["params_nonzero"] == tuned["params_nonzero"] and pruned["criterion"] == tuned["criterion"]

    saved = json.loads((out / "rows.json").read_text())
    assert saved["skipped_shares_pct"] == [99.0] == meta["skipped_shares_pct"]  # above the prunable share
    assert saved["git_commit"] and len(saved["rows"]) == len(rows) and saved["dense"][0]["config"]["seed"] == 0
    summary = (out / "summary.md").read_text()
    assert "Table 3" in summary and "Table 4" in summary and "Skipped" in summary
    assert (out / "replication.png").stat().st_size > 10_000

    again = replicate.main(["--seeds", "0", "--dense-epochs", "1", "--shares", "50", "--criteria", "dimap",
                            "--finetune-criteria", "--out", str(tmp_path / "again"),
                            "--cache-dir", str(tmp_path / "cache"), "train.max_steps_per_epoch=2",
                            "data.val_size=100", "model.kwargs.embed_dim=12", "model.kwargs.num_heads=[1,2,2,4]",
                            "model.kwargs.depths=[1,1,1,1]"])
    assert again["dense"][0]["cached"]  # the dense model comes from the cache the first run wrote
    assert again["rows"][0]["top1"] == float(rows[1]["top1"])  # same dense weights, same masks, same accuracy


def test_the_nano_vit_runs_alone_into_its_own_folder(replicate, tmp_path, monkeypatch):
    monkeypatch.setattr(replicate, "RESULTS", tmp_path / "demo")  # the default --out is RESULTS/vit_nano
    meta = replicate.main([
        "--model", "vit_nano", "--seeds", "0", "--dense-epochs", "1", "--shares", "50", "--criteria", "uniform",
        "dimap", "--finetune-criteria", "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
        "train.max_steps_per_epoch=2", "data.val_size=100", "model.kwargs.embed_dim=16", "model.kwargs.depth=2"])
    out = tmp_path / "demo" / "vit_nano"
    rows = list(csv.DictReader(open(out / "rows.csv")))
    assert [(r["model"], r["criterion"]) for r in rows] == [("vit_nano", "uniform"), ("vit_nano", "dimap")]
    assert meta["dense"][0]["config"]["model"]["short"] == "vit_nano"
    assert "Model: vit_nano" in (out / "summary.md").read_text()
