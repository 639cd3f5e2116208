"""Smoke tests: each benchmark script runs at tiny sizes (nano model) and writes its JSON record."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load(name):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_record(path: Path) -> dict:
    rec = json.loads(path.read_text())
    assert {"benchmark", "machine", "versions", "git_commit", "command", "config", "seed", "results"} <= set(rec)
    assert rec["versions"]["torch"] and rec["machine"]["cpus"]
    return rec


def test_bench_masks(tmp_path):
    load("bench_masks").main(["--model", "swin_nano", "--methods", "dimap", "global_magnitude", "--repeats", "1",
                              "--init", "pruned", "--out", str(tmp_path)])
    res = read_record(tmp_path / "masks_swin_nano_pruned_cpu.json")["results"]
    assert set(res["arms"]) == {"torch_global_unstructured", "dimap", "global_magnitude"}
    vs_torch = res["global_magnitude_vs_torch"]  # exact zeros and ties: torch's topk breaks ties its own way
    assert vs_torch["all_differences_are_ties_at_the_cut"] and vs_torch["same_removed_count"]
    assert "target_dimap_at_most_half_of_torch" in res


def test_bench_mask_overhead(tmp_path):
    load("bench_mask_overhead").main(["--model", "swin_nano", "--batch", "2", "--repeats", "1", "--warmup", "0",
                                      "--apply-repeats", "2",
                                      "--out", str(tmp_path)])
    res = read_record(tmp_path / "overhead_swin_nano_cpu.json")["results"]
    assert set(res["median_step_s"]) == {"plain", "masked", "masked_grads"}
    assert res["apply_median_s"] > 0


def test_bench_latency(tmp_path):
    load("bench_latency").main(["--device", "cpu", "--models", "swin_nano", "--batch-sizes", "1", "--repeats", "1",
                                "--warmup", "0", "--ratios", "0.55", "--csr-ratios", "0.55", "--out", str(tmp_path)])
    res = read_record(tmp_path / "latency_cpu.json")["results"]
    arms = res["models"]["swin_nano"]["batches"]["1"]
    assert set(arms) == {"dense", "dimap_r0.55", "csr_r0.55"}
    assert arms["csr_r0.55"]["max_abs_diff_vs_dimap"] < 1e-3  # CSR computes the pruned model's function
    total = res["models"]["swin_nano"]["two_four"]["0.55"]["total"]
    assert 0 <= total["dropped"] <= total["kept"]


def test_two_four_projection_rule():
    import torch
    two_four_mask = load("bench_latency").two_four_mask
    w = torch.tensor([[4.0, -3.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.0]])
    dimap_kept = torch.tensor([[False, True, True, True, True, True, True, False]])
    # group 1: kept {-3, 2, 1} -> keep -3 and 2; group 2: kept {1, 1, 0.5}, tie -> lower index first
    assert two_four_mask(w, dimap_kept).tolist() == [[False, True, True, False, True, True, False, False]]


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_gpu_check_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPTS / "gpu_check.sh")], check=True)
