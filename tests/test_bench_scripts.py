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
                              "--init", "pruned", "--reference", "--out", str(tmp_path)])
    res = read_record(tmp_path / "masks_swin_nano_pruned_cpu.json")["results"]
    assert set(res["arms"]) == {"torch_global_unstructured", "dimap", "global_magnitude"}
    vs_torch = res["global_magnitude_vs_torch"]  # exact zeros and ties: torch's topk breaks ties its own way
    assert vs_torch["all_differences_are_ties_at_the_cut"] and vs_torch["same_removed_count"]
    arms = res["arms"]
    for a in arms.values():  # the ratio is the one the record's own medians give
        assert a["ratio_to_torch"] == pytest.approx(a["median_s"] / arms["torch_global_unstructured"]["median_s"])
    assert res["target_dimap_at_most_half_of_torch"] == (arms["dimap"]["ratio_to_torch"] <= 0.5)
    assert res["prunable_weights"] > 0
    assert {a: r["identical_masks"] for a, r in res["reference"].items()} == {"dimap": True, "global_magnitude": True}


def test_bench_mask_overhead(tmp_path):
    load("bench_mask_overhead").main(["--model", "swin_nano", "--batch", "2", "--repeats", "1", "--warmup", "0",
                                      "--apply-repeats", "2",
                                      "--out", str(tmp_path)])
    res = read_record(tmp_path / "overhead_swin_nano_cpu.json")["results"]
    med = res["median_step_s"]
    assert set(med) == {"plain", "masked", "masked_grads"} and all(t > 0 for t in med.values())
    assert res["ratio_of_medians"]["masked"] == pytest.approx(med["masked"] / med["plain"])
    assert res["apply_over_plain_step"] == pytest.approx(res["apply_median_s"] / med["plain"])
    assert 0 < res["apply_median_s"] < med["plain"]  # re-masking costs less than the step it follows


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
    # group 1: kept {-3, 2, 1} -> keep -3 and 2; group 2: kept {1, 1, 0.5} -> keep both 1s (ties: lower index removed first)
    assert two_four_mask(w, dimap_kept).tolist() == [[False, True, True, False, True, True, False, False]]


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_gpu_check_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPTS / "gpu_check.sh")], check=True)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("imagefolder") / "data"
    manifest = load("make_imagefolder").main(["--out", str(out), "--train-per-class", "3", "--val-per-class", "1",
                                              "--min-size", "20", "--max-size", "60"])
    return out, manifest


def test_make_imagefolder_writes_labelled_jpegs_of_mixed_sizes(jpeg_folder):
    from PIL import Image

    from dimap.training.data import _mnist5k_arrays, mnist5k_split

    out, manifest = jpeg_folder
    images, labels = _mnist5k_arrays()
    split = dict(zip(("train", "val"), (set(s.tolist()) for s in mnist5k_split(labels))))
    for name, per_class in (("train", 3), ("val", 1)):
        folders = sorted(p.name for p in (out / name).iterdir())
        assert folders == [f"n{c:08d}" for c in range(10)]  # ImageNet-style synset names, one per digit
        sizes = set()
        for c, folder in enumerate(folders):
            files = sorted((out / name / folder).glob("*.JPEG"))
            assert len(files) == per_class == manifest[name]["per_class"][folder]
            for f in files:
                index = int(f.stem.split("_")[1])
                assert labels[index] == c and index in split[name]  # the right digit, no train/val leak
                with Image.open(f) as img:
                    assert img.format == "JPEG" and img.mode == "RGB"
                    assert all(20 <= s <= 60 for s in img.size)
                    sizes.add(img.size)
        assert len(sizes) > per_class  # mixed sizes, not one resize for all
        assert manifest[name]["images"] == 10 * per_class


def test_make_imagefolder_refuses_an_existing_folder(jpeg_folder, capsys):
    with pytest.raises(SystemExit) as e:
        load("make_imagefolder").main(["--out", str(jpeg_folder[0])])
    assert e.value.code == 2 and "pass a new --out folder" in capsys.readouterr().err


def test_bench_data_counts_images_and_rates_per_worker(jpeg_folder, tmp_path):
    res = load("bench_data").main(["--root", str(jpeg_folder[0]), "--workers", "0", "2", "--images", "26",
                                   "--batch", "4", "--img-size", "32", "--out", str(tmp_path)])
    assert read_record(tmp_path / "data_pipeline.json")["results"] == json.loads(json.dumps(res))
    assert res["train_images"] == 30 and "RandAugment" in res["transform"]  # the paper's augmentation
    for w, v in res["workers"].items():
        run = v["runs"][0]
        assert run["images"] == 24 and run["batches"] == 6  # 26 requested -> six whole batches of 4
        assert run["steady_images"] == 12 and run["image_shape"] == [3, 32, 32]  # the last 3 batches
        assert run["steady_images_per_s"] == pytest.approx(12 / run["steady_s"])
        assert v["images_per_s_per_worker"] == pytest.approx(v["median_images_per_s"] / max(int(w), 1))


def test_bench_train_throughput_compares_the_two_measured_arms(tmp_path):
    import statistics

    res = load("bench_train_throughput").main(["--model", "swin_nano", "--batch", "2", "--steps", "2", "--repeats",
                                               "3", "--warmup-steps", "1", "--no-progress", "--out", str(tmp_path)])
    rec = read_record(tmp_path / "train_throughput_swin_nano_cpu.json")
    assert rec["results"]["engine_over_bare"] == res["engine_over_bare"]
    arms = res["images_per_s"]
    for arm in ("bare", "engine"):
        assert arms[arm]["images"] == [4, 4, 4]  # 2 steps x batch 2, every repeat: the engine consumed them all
        assert arms[arm]["runs"] == [pytest.approx(n / t) for n, t in zip(arms[arm]["images"], arms[arm]["seconds"])]
        assert arms[arm]["median"] == statistics.median(arms[arm]["runs"])
    assert res["engine_over_bare"] == pytest.approx(arms["engine"]["median"] / arms["bare"]["median"])
    assert res["median_paired_ratio"] == pytest.approx(statistics.median(
        e / b for e, b in zip(arms["engine"]["runs"], arms["bare"]["runs"])))
    assert res["mask_violations_at_end"] == 0 and res["masked_weights"] > 0  # the engine arm holds the mask
    assert res["world_size"] == 1 and res["clip_grad"] == 5.0


def test_gpu_check_kills_every_process_it_started(tmp_path):
    import time

    gpu_check = load("gpu_check")
    pids = tmp_path / "pids"
    # like torchrun: a child in its own process session (setsid), which killing the process group would miss
    proc = subprocess.Popen(["bash", "-c", f"sleep 60 & echo $! >> {pids}; setsid sleep 60 & echo $! >> {pids}; wait"])
    while len(pids.read_text().split() if pids.exists() else []) < 2:
        time.sleep(0.05)
    children = [int(p) for p in pids.read_text().split()]
    assert set(children) <= set(gpu_check.descendants(proc.pid))
    gpu_check.kill_tree(proc)
    time.sleep(0.2)
    for pid in children:  # killed, or at most a zombie awaiting its reaper
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_gpu_check_records_a_failed_step_and_runs_the_next(tmp_path):
    gpu_check = load("gpu_check")
    check = gpu_check.GpuCheck(tmp_path / "out", tmp_path / "work", "smoke", budget_s=300)

    def fails(name, timeout):
        raise gpu_check.StepFailed("planted")

    def crashes(name, timeout):
        raise KeyError("a driver bug")

    def writes(name, timeout):
        (check.steps_dir / name).mkdir()
        (check.steps_dir / name / "r.json").write_text('{"x": 1}')

    check.step("imagefolder", fails)
    check.step("train_e2e", writes, "imagefolder")  # needs imagefolder: skipped, not run
    check.step("mask_overhead", crashes)
    check.step("latency", writes)
    check.t_end = 0  # no time left: later steps are skipped
    check.step("masks_timm", writes)
    summary = json.loads((tmp_path / "out" / "gpu_check_summary.json").read_text())
    assert summary["statuses"] == {"imagefolder": "failed", "train_e2e": "skipped", "mask_overhead": "failed",
                                   "latency": "ok", "masks_timm": "skipped"}
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["imagefolder"]["reason"] == "planted" and "KeyError" in steps["mask_overhead"]["reason"]
    assert steps["latency"]["records"] == {"r.json": {"x": 1}} and not (check.steps_dir / "train_e2e").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "gpu_check.log", "gpu_check_steps.tar.gz", "gpu_check_summary.json"]  # three files, easy to copy back from a node


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_on_cpu(tmp_path):
    """GPU_CHECK_SMOKE=1 bash scripts/gpu_check.sh: every step of the GPU check at toy size, torchrun with gloo."""
    import os
    import tarfile

    env = {**os.environ, "GPU_CHECK_SMOKE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--out", str(tmp_path / "out"), "--work",
                        str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "out" / "gpu_check_summary.json").read_text())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert summary["statuses"] == dict.fromkeys(load("gpu_check").TIMEOUTS, "ok")
    steps = {s["name"]: s for s in summary["steps"]}
    e2e = steps["train_e2e"]["records"]["train_e2e.json"]
    assert e2e["first_run"]["returncode"] == -9 and all(e2e["checks"].values())
    assert [row["epoch"] for row in e2e["log_rows"]] == [0, 1] and e2e["summary"]["val_images"] == 20
    assert steps["data_pipeline"]["records"]["data_pipeline.json"]["results"]["train_images"] == 80
    throughput = steps["train_throughput"]["records"]["train_throughput_swin_nano_cpu.json"]["results"]
    assert throughput["images_per_s"]["engine"]["images"] == [4, 4]
    with tarfile.open(tmp_path / "out" / "gpu_check_steps.tar.gz") as tar:
        names = tar.getnames()
    assert {f"steps/{name}" for name in steps} <= set(names)


def test_gpu_check_takes_the_declared_commit_where_there_is_no_git(monkeypatch):
    import dimap.provenance

    environment = load("gpu_check").environment
    monkeypatch.setenv("GPU_CHECK_COMMIT", "abc123")
    assert environment()["git_commit"] == dimap.provenance.git_commit()  # a checkout: git's own answer wins
    monkeypatch.setattr(dimap.provenance, "git_commit", lambda: "unknown")  # a copy of the clone without .git
    assert environment()["git_commit"] == "abc123 (declared by GPU_CHECK_COMMIT)"
