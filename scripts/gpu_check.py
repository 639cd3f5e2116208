"""The steps of scripts/gpu_check.sh (which installs missing packages from a wheel folder when given one, then
runs this): each step runs as its own process with a timeout; a failed step is recorded and the next one runs.

    python scripts/gpu_check.py                    # CUDA: full sizes, under 8 minutes on one H100/H200
    python scripts/gpu_check.py --smoke            # CPU + gloo, the same steps at toy size (GPU_CHECK_SMOKE=1)

OUT (default $OUT, else results/bench/gpu; smoke: a temporary folder) receives three files, rewritten after
every step (few files, easy to copy back from a node): gpu_check_summary.json (every step's status, reason, time,
command and the JSON records it wrote, embedded), gpu_check.log (every step's output) and
gpu_check_steps.tar.gz (each step's folder: its JSON records as the scripts wrote them, and its log).
"""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TORCHRUN = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]

# The end-to-end run: experiment=table1/swin_t_dimap3 (paper recipe, Mixup/CutMix) from random weights (the GPU
# machine has no network) on the generated 10-class folder, two epochs, killed after the first checkpoint. The
# learning rate is a from-scratch one (the paper's 2e-5 finetunes pretrained weights), so top-1 can move.
E2E_COMMON = ["experiment=table1/swin_t_dimap3", "model.weights=random", "++model.kwargs.num_classes=10",
              "data=imagenet", "train.epochs=2", "train.warmup_epochs=1", "train.lr=5.0e-4",
              "train.lr_base_batch=128", "logger=none", "seed=0"]
SIZES = {
    "gpu": {
        "imagefolder": [],
        # EMA on: its own FixedMask (masks from the CPU, the EMA copy on the GPU) runs under NCCL too
        "e2e": ["device=cuda", "train.amp=bf16", "train.channels_last=true", "train.ema=true",
                "train.global_batch=128", "train.batch_size=128", "train.eval_batch_size=250", "data.num_workers=8"],
        "throughput": ["--device", "cuda", "--amp", "bf16", "--model", "swin_t", "--batch", "128", "--steps", "20",
                       "--repeats", "5", "--warmup-steps", "5"],
        "data": ["--workers", "1", "2", "4", "8", "--images", "2048", "--batch", "32"],
        "masks_timm": ["--device", "cuda", "--model", "swin_b", "--repeats", "3", "--reference"],
        "masks_pruned": ["--device", "cuda", "--model", "swin_b", "--init", "pruned", "--methods", "dimap",
                         "global_magnitude", "--repeats", "2", "--reference"],
        "overhead": ["--device", "cuda", "--amp", "bf16", "--model", "swin_b", "--batch", "64", "--repeats", "20"],
        "latency": ["--device", "cuda", "--models", "swin_t", "swin_s", "swin_b", "--batch-sizes", "1", "64",
                    "--repeats", "20", "--warmup", "3"],
        # 2:4 (docs/sparsity.md): dense vs 2:4 kernels from prune.py's 2:4 models; evaluation images/s on them
        "nm_latency": ["--device", "cuda", "--models", "swin_t", "swin_s", "swin_b", "--batch-sizes", "1", "64",
                       "256", "--repeats", "20", "--warmup", "3"],
        "nm_eval": ["device=cuda", "prune.semi_structured=true", "train.eval_batch_size=256", "data.num_workers=8"],
    },
    "smoke": {
        "imagefolder": ["--train-per-class", "8", "--val-per-class", "2", "--min-size", "24", "--max-size", "96"],
        "e2e": ["device=cpu", "model=swin_nano", "model.kwargs.patch_size=4", "model.kwargs.embed_dim=8",
                "model.kwargs.depths=[1,1,1,1]", "model.kwargs.num_heads=[1,1,1,1]", "model.kwargs.in_chans=3",
                "model.in_chans=3", "data.img_size=32", "train.global_batch=8", "train.batch_size=8",
                "train.eval_batch_size=20", "data.num_workers=0"],
        "throughput": ["--device", "cpu", "--model", "swin_nano", "--batch", "2", "--steps", "2", "--repeats", "2",
                       "--warmup-steps", "1", "--no-progress"],
        "data": ["--workers", "0", "1", "--images", "16", "--batch", "4", "--img-size", "64"],
        "masks_timm": ["--model", "swin_nano", "--methods", "dimap", "--repeats", "1", "--reference"],
        "masks_pruned": ["--model", "swin_nano", "--methods", "dimap", "--init", "pruned", "--repeats", "1",
                         "--reference"],
        "overhead": ["--model", "swin_nano", "--batch", "2", "--repeats", "2", "--warmup", "0",
                     "--apply-repeats", "2"],
        "latency": ["--device", "cpu", "--models", "swin_nano", "--batch-sizes", "1", "--repeats", "1",
                    "--warmup", "0", "--ratios", "0.55", "--csr-ratios", "0.9"],
        "nm_latency": ["--device", "cpu", "--models", "swin_nano", "--batch-sizes", "1", "--repeats", "1",
                       "--warmup", "0"],
        # no 2:4 kernels on a CPU: the same evaluation run without the conversion
        "nm_eval": ["device=cpu", "model=swin_nano", "model.kwargs.in_chans=3", "model.in_chans=3", "data.img_size=32",
                    "train.eval_batch_size=20", "data.num_workers=0"],
    },
}
# Seconds each step may take at most (also capped by what is left of --budget-s); in running order.
TIMEOUTS = {"imagefolder": 60, "train_e2e": 300, "train_throughput": 150, "data_pipeline": 120,
            "mask_overhead": 120, "latency": 150, "masks_timm": 150, "masks_pruned": 150,
            "nm_latency": 300, "nm_eval": 150}
# The 2:4 evaluation run: Swin-T at 2:4 (experiment=nm/swin_t_2of4), random weights, on the generated folder,
# pruned and evaluated only (train.epochs=0); its summary.json holds semi_structured.images_per_s.
NM_EVAL = ["experiment=nm/swin_t_2of4", "model.weights=random", "++model.kwargs.num_classes=10", "data=imagenet",
           "train.epochs=0", "logger=none", "seed=0"]


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (torchrun starts its workers in sessions of their own)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in descendants(proc.pid):  # collected first, then killed: none is reparented in between
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_logged(argv, log: Path, timeout: float, env=None) -> int:
    """Run argv with its output appended to `log`; on timeout kill it and all it started and return 124."""
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            f.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
            return 124


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:  # a record cut short must not cost the summary
        return {"unreadable": f"{type(e).__name__}: {e}"}


class StepFailed(Exception):
    """A step ran but a check failed: the message says which."""


class GpuCheck:
    def __init__(self, out: Path, work: Path, mode: str, budget_s: float, only=None):
        self.out, self.work, self.mode, self.sizes = out, work, mode, SIZES[mode]
        self.only = set(only or TIMEOUTS)
        self.steps_dir, self.t_end = work / "steps", time.monotonic() + budget_s
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
        if mode == "gpu":
            self.env["NCCL_DEBUG"] = "INFO"  # NCCL prints "NCCL INFO" lines once a communicator exists
        self.summary = {"mode": mode, "budget_s": budget_s, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()),
                        "environment": environment(), "steps": []}

    def remaining(self) -> float:
        return self.t_end - time.monotonic()

    def command(self, name: str, argv: list[str], timeout: float, env=None) -> Path:
        d = self.steps_dir / name
        d.mkdir(exist_ok=True)
        rc = run_logged(argv, d / f"{name}.log", timeout, env or self.env)
        if rc != 0:
            raise StepFailed("timed out" if rc == 124 else f"exit status {rc}")
        return d

    def script(self, name: str, script: str, args: list[str], timeout: float, torchrun=False) -> None:
        out = self.steps_dir / name
        argv = (TORCHRUN if torchrun else [PY]) + [str(ROOT / "scripts" / script), *args, "--out", str(out)]
        self.command(name, argv, timeout)
        if not list(out.glob("*.json")):
            raise StepFailed(f"{script} exited 0 but wrote no JSON record")

    def make_imagefolder(self, name: str, timeout: float, folder: Path) -> None:
        d = self.command(name, [PY, str(ROOT / "scripts" / "make_imagefolder.py"), "--out", str(folder),
                                *self.sizes["imagefolder"]], timeout)
        (d / "manifest.json").write_text((folder / "manifest.json").read_text())

    def nm_eval(self, name: str, timeout: float, folder: Path) -> dict:
        """train.py at 2:4, evaluation only, with the 2:4 kernels on CUDA: its summary.json is the record."""
        out = self.steps_dir / name / "run"
        self.command(name, [PY, str(ROOT / "train.py"), *NM_EVAL, *self.sizes["nm_eval"], f"data.root={folder}",
                            f"output_dir={out}"], timeout)
        summary = read_json(out / "summary.json")
        keep = ("pattern", "nm_layers", "top1", "flops_nm_kernel", "weight_bytes_16bit_nm", "semi_structured")
        (self.steps_dir / name / "nm_eval.json").write_text(json.dumps({k: summary.get(k) for k in keep}, indent=1))
        if summary.get("pattern") != "2:4":
            raise StepFailed("train.py's summary.json does not record pattern 2:4")

    def step(self, name: str, fn, *needs: str) -> None:
        if name not in self.only and not (name == "imagefolder" and {"train_e2e", "data_pipeline", "nm_eval"}
                                          & self.only):
            return
        t0, entry = time.monotonic(), {"name": name}
        timeout = min(TIMEOUTS[name], self.remaining())
        done = {s["name"]: s["status"] for s in self.summary["steps"]}
        missing = [n for n in needs if done.get(n) != "ok"]
        if missing:
            entry.update(status="skipped", reason=f"needs step {missing[0]}, which did not succeed")
        elif timeout < 10:
            entry.update(status="skipped", reason="out of the time budget (--budget-s)")
        else:
            try:
                entry.update(fn(name, timeout) or {})
                entry["status"] = "ok"
            except StepFailed as e:
                entry.update(status="failed", reason=str(e))
            except Exception as e:  # a bug in this driver must not cost the other steps
                entry.update(status="failed", reason=f"{type(e).__name__}: {e}")
        entry["seconds"] = round(time.monotonic() - t0, 1)
        d = self.steps_dir / name
        entry["records"] = {p.name: read_json(p) for p in sorted(d.glob("*.json"))} if d.exists() else {}
        self.summary["steps"].append(entry)
        print(f"[gpu_check] {name}: {entry['status']} ({entry['seconds']} s){' - ' + entry.get('reason', '')}",
              flush=True)
        for log in sorted(d.glob("*.log")) if entry["status"] == "failed" else []:
            print(f"--- last lines of {log.name}:\n" + "".join(log.read_text(errors="replace").splitlines(True)[-15:]),
                  flush=True)
        self.write()

    def write(self) -> None:
        self.summary["statuses"] = {s["name"]: s["status"] for s in self.summary["steps"]}
        tmp = self.out / "gpu_check_summary.json.tmp"
        sys.path.insert(0, str(ROOT))
        from dimap.provenance import portable  # the record holds paths relative to the clone, no machine's folders
        tmp.write_text(json.dumps(portable(self.summary, ROOT), indent=2, default=str) + "\n")
        tmp.replace(self.out / "gpu_check_summary.json")
        logs = sorted(self.steps_dir.glob("*/*.log"))
        (self.out / "gpu_check.log").write_text("".join(f"===== {p.parent.name} =====\n"
                                                        f"{p.read_text(errors='replace')}\n" for p in logs))
        with tarfile.open(self.out / "gpu_check_steps.tar.gz", "w:gz") as tar:
            tar.add(self.steps_dir, arcname="steps")

    def run_all(self) -> dict:
        from gpu_check_e2e import train_e2e  # noqa: PLC0415  (the kill/resume run, in its own file)

        folder, s = self.work / "imagefolder", self.sizes
        self.step("imagefolder", lambda n, t: self.make_imagefolder(n, t, folder))
        self.step("train_e2e", lambda n, t: train_e2e(self, n, t, folder, E2E_COMMON + s["e2e"]), "imagefolder")
        self.step("train_throughput", lambda n, t: self.script(n, "bench_train_throughput.py", s["throughput"], t,
                                                               torchrun=True))
        self.step("data_pipeline", lambda n, t: self.script(n, "bench_data.py", ["--root", str(folder), *s["data"]],
                                                            t), "imagefolder")
        self.step("mask_overhead", lambda n, t: self.script(n, "bench_mask_overhead.py", s["overhead"], t))
        self.step("latency", lambda n, t: self.script(n, "bench_latency.py", s["latency"], t))
        self.step("masks_timm", lambda n, t: self.script(n, "bench_masks.py", s["masks_timm"], t))
        self.step("masks_pruned", lambda n, t: self.script(n, "bench_masks.py", s["masks_pruned"], t))
        self.step("nm_latency", lambda n, t: self.script(n, "bench_nm.py", s["nm_latency"], t))
        self.step("nm_eval", lambda n, t: self.nm_eval(n, t, folder), "imagefolder")
        self.summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.write()
        return self.summary


def environment() -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from dimap.provenance import git_commit, versions

    # a copy of the clone without .git (e.g. one sent to a GPU node) says its commit in GPU_CHECK_COMMIT
    commit = git_commit()
    if commit == "unknown" and os.environ.get("GPU_CHECK_COMMIT"):
        commit = os.environ["GPU_CHECK_COMMIT"] + " (declared by GPU_CHECK_COMMIT)"
    info = {"git_commit": commit, "versions": versions(), "cpus": os.cpu_count(),
            "cuda_available": torch.cuda.is_available(), "nccl_available": torch.distributed.is_nccl_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        info["nvidia_smi"] = smi.stdout.strip()
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", default=os.environ.get("GPU_CHECK_SMOKE") == "1",
                   help="CPU, gloo, toy sizes (also GPU_CHECK_SMOKE=1)")
    p.add_argument("--out", default=None, help="default: $OUT, else results/bench/gpu (smoke: a temporary folder)")
    p.add_argument("--work", default=None, help="scratch folder (generated images, training runs); default: temporary")
    p.add_argument("--only", nargs="+", choices=list(TIMEOUTS), help="run these steps (and imagefolder if needed)")
    p.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 470)))
    args = p.parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("error: torch sees no CUDA device: run this on a GPU, or pass --smoke (GPU_CHECK_SMOKE=1) for the "
              "CPU dry run", file=sys.stderr)
        return 2
    out = Path(args.out or os.environ.get("OUT") or
               (tempfile.mkdtemp(prefix="gpu_check_out_") if args.smoke else ROOT / "results" / "bench" / "gpu"))
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_work_"))
    if (work / "steps").exists() or (work / "imagefolder").exists():
        print(f"error: {work} holds an earlier check's files: pass an empty --work folder", file=sys.stderr)
        return 2
    print(f"[gpu_check] mode {'smoke (CPU, gloo)' if args.smoke else 'gpu'}; results in {out}; scratch in {work}; "
          f"budget {args.budget_s:.0f} s", flush=True)
    summary = GpuCheck(out, work, "smoke" if args.smoke else "gpu", args.budget_s, args.only).run_all()
    bad = [s["name"] for s in summary["steps"] if s["status"] != "ok"]
    print(f"[gpu_check] {len(summary['steps']) - len(bad)}/{len(summary['steps'])} steps ok"
          + (f"; not ok: {', '.join(bad)}" if bad else "") + f"; wrote {out}/gpu_check_summary.json", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_check  # one module object, so gpu_check_e2e raises the StepFailed caught here

    sys.exit(gpu_check.main())
