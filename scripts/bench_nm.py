"""Dense vs 2:4 latency and throughput of Swin-T/S/B in bf16, from 2:4 models saved by prune.py.

    python scripts/bench_nm.py                                   # CUDA sm80+: Swin-T/S/B, batch 1 64 256, bf16
    python scripts/bench_nm.py --device cpu --models swin_nano --batch-sizes 1 --repeats 1   # dry run, dense only

Per model: `prune.py model=M model.weights=random prune=dimap prune.pattern=2:4 prune.ratio=0.5` (every prunable
layer 2:4; random weights time the same as trained ones), the saved model read back with read_pruned, then two
arms fed the same bf16 batch: `dense` (the pruned model in bf16, dense kernels) and `semi24` (its 2:4 layers on
torch.sparse.to_sparse_semi_structured kernels, dimap.pruning.semi_structured). Medians over --repeats rounds
(each round runs every arm once, in rotating order), spread as min/max, paired speed-up; the largest logit
difference between the arms. Where 2:4 kernels are unavailable the dense arm is timed and the reason recorded.
Writes OUT/nm_latency_<device>.json (command, config, git commit, machine).
"""
import argparse
import copy
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import time_arms  # noqa: E402
from bench_masks import ROOT, model_input, record  # noqa: E402

from dimap.models import create_model  # noqa: E402
from dimap.pruning.pruned_file import read_pruned  # noqa: E402
from dimap.pruning.semi_structured import CastIO, to_semi_structured, unavailable_reason  # noqa: E402
from dimap.report import write_json  # noqa: E402


def prune_two_four(short: str, out: Path, seed: int) -> Path:
    """A 2:4 Swin saved by prune.py (random weights)."""
    subprocess.run([sys.executable, str(ROOT / "prune.py"), f"model={short}", "model.weights=random", f"seed={seed}",
                    "prune=dimap",
                    "prune.pattern=2:4", "prune.ratio=0.5", "plot=false", f"output_dir={out}"], check=True, cwd=ROOT)
    return out


def arms_of(run_dir: Path, device: str) -> tuple[dict, dict]:
    state, masks, meta = read_pruned(run_dir)
    model = create_model(meta["model"], meta["kwargs"]).eval()
    model.load_state_dict(state)
    arms = {"dense": CastIO(copy.deepcopy(model).to(device, torch.bfloat16), torch.bfloat16)}
    info = {"pattern": meta.get("pattern"), "prunable_layers": len(masks)}
    reason = unavailable_reason(device)
    if reason:
        info["semi24_unavailable"] = reason
    else:
        arms["semi24"], rec = to_semi_structured(model, masks, torch.bfloat16, device=device)
        info.update(converted=len(rec["converted"]), refused_shape=rec["refused_shape"])
    return arms, info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["swin_t", "swin_s", "swin_b"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--work", help="where prune.py writes the 2:4 models (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="prune.py's seed (the random weights)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_nm_"))
    args.work = "(scratch)"  # the record names no machine's folders
    results = {"models": {}, "notes": [
        "dense: the 2:4-pruned model in bf16 on dense kernels; semi24: the same model with every 2:4 layer on "
        "2:4 kernels (torch.sparse.to_sparse_semi_structured). Both take a bf16 batch and return float32 logits.",
        "weights are random (prune.py model.weights=random): kernel time does not depend on the values."]}
    for short in args.models:
        arms, info = arms_of(prune_two_four(short, work / short, args.seed), args.device)
        entry = {**info, "batches": {}}
        print(f"{short}: {info.get('converted', 0)} of {info['prunable_layers']} layers on 2:4 kernels"
              + (f" ({info['semi24_unavailable']})" if "semi24_unavailable" in info else ""), flush=True)
        for b in args.batch_sizes:
            x = model_input(short, b).to(args.device, torch.bfloat16)
            try:
                timed = time_arms(arms, x, args.device, args.repeats, args.warmup, amp=False)
            except (RuntimeError, torch.OutOfMemoryError) as e:
                entry["batches"][str(b)] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            base = timed["dense"]
            for v in timed.values():
                v["speedup_vs_dense"] = base["median_ms"] / v["median_ms"]
                v["paired_speedup_vs_dense"] = sorted(d / t for d, t in zip(base["times_s"], v["times_s"]))[
                    len(v["times_s"]) // 2]
                v["min_ms"], v["max_ms"] = 1e3 * min(v["times_s"]), 1e3 * max(v["times_s"])
            if "semi24" in arms:
                with torch.inference_mode():
                    timed["semi24"]["max_abs_logit_diff_vs_dense"] = float((arms["semi24"](x) - arms["dense"](x))
                                                                           .abs().max())
            entry["batches"][str(b)] = timed
            for k, v in timed.items():
                print(f"  {short:<7} batch {b:<4} {k:<7} {v['median_ms']:>9.2f} ms [{v['min_ms']:.2f}, "
                      f"{v['max_ms']:.2f}] {v['images_per_s']:>9.1f} img/s {v['speedup_vs_dense']:>5.2f}x dense "
                      f"(paired {v['paired_speedup_vs_dense']:.2f}x)", flush=True)
        results["models"][short] = entry
        del arms
    path = Path(args.out) / f"nm_latency_{args.device.split(':')[0]}.json"
    write_json(path, record("nm_latency", args, results, args.device))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
