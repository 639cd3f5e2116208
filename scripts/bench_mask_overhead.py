"""Benchmark: the cost of holding a mask fixed during finetuning (FixedMask.apply after every AdamW step).

    python scripts/bench_mask_overhead.py                                    # nano demo model, batch 64, CPU
    python scripts/bench_mask_overhead.py --model swin_t --batch 8 --repeats 8
    python scripts/bench_mask_overhead.py --model swin_b --batch 64 --device cuda --amp bf16

Three arms share one model and optimizer and run in a rotating order, one training step each per repeat:
`plain` (forward, backward, AdamW step), `masked` (plain + FixedMask.apply() after the step, the trainer's
way) and `masked_grads` (masked + FixedMask.mask_grads() before the step, not needed for the mask to hold).
The apply() call is also timed on its own. Medians and ratios go to OUT/overhead_<model>_<device>.json.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_masks import ROOT, build_model, model_input, record  # noqa: E402

from dimap.pruning.masks import FixedMask, apply_masks, compute_masks  # noqa: E402
from dimap.report import write_json  # noqa: E402

ARMS = ["plain", "masked", "masked_grads"]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="swin_nano", help="conf/model name: swin_nano, swin_t, swin_s, swin_b")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=30, help="steps per arm, alternated")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--apply-repeats", type=int, default=20, help="apply() vs whole-tensor _foreach_mul_ pairs")
    p.add_argument("--ratio", type=float, default=0.55)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = p.parse_args(argv)

    dev = args.device
    model = build_model(args.model, args.seed).to(dev).train()
    masks = compute_masks(model, "dimap", args.ratio)
    apply_masks(model, masks)
    fixed = FixedMask(model, masks)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
    x = model_input(args.model, args.batch).to(dev)
    y = torch.randint(0, model.num_classes, (args.batch,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    amp = torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=args.amp == "bf16")
    apply_times = []

    def step(arm: str) -> tuple[float, float]:
        sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        with amp:
            loss = loss_fn(model(x), y)
        loss.backward()
        if arm == "masked_grads":
            fixed.mask_grads()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if arm != "plain":
            sync(dev)
            t1 = time.perf_counter()
            fixed.apply()
            sync(dev)
            if arm == "masked":
                apply_times.append(time.perf_counter() - t1)
        sync(dev)
        return time.perf_counter() - t0, time.process_time() - c0

    prunable = sum(m.numel() for m in masks.values())
    print(f"{args.model}: batch {args.batch}, {prunable / 1e6:.1f}M masked weights at ratio {args.ratio}, device "
          f"{dev}, amp {args.amp}, {args.repeats} steps per arm, {torch.get_num_threads()} threads")
    for arm in ARMS * args.warmup:
        step(arm)
    apply_times.clear()
    times = {a: [] for a in ARMS}
    cpu_times = {a: [] for a in ARMS}  # process CPU time: less sensitive to other jobs taking the cores
    for r in range(args.repeats):
        for a in ARMS[r % 3:] + ARMS[:r % 3]:
            wall, cpu = step(a)
            times[a].append(wall)
            cpu_times[a].append(cpu)
    step("masked")  # plain steps let pruned weights regrow; one masked step must zero them all again
    assert fixed.violations() == 0
    apply_times.pop()

    # apply() against the plain whole-tensor _foreach_mul_ it replaced (one OpenMP region per tensor on CPU)
    pair = {"apply": [], "foreach_mul_whole_tensors": []}
    with torch.no_grad():
        for r in range(args.apply_repeats):
            for k in sorted(pair, reverse=r % 2 == 1):
                sync(dev)
                t0 = time.perf_counter()
                fixed.apply() if k == "apply" else torch._foreach_mul_(fixed.params, fixed.factors)
                sync(dev)
                pair[k].append(time.perf_counter() - t0)

    med = {a: statistics.median(t) for a, t in times.items()}
    # each round runs every arm once, back to back: the per-round ratio survives the load changing between rounds
    paired = {a: statistics.median(t / p for t, p in zip(times[a], times["plain"])) for a in ARMS[1:]}
    cpu_med = {a: statistics.median(t) for a, t in cpu_times.items()}
    apply_med = statistics.median(apply_times)
    results = {
        "masked_weights": prunable,
        "median_step_s": med,
        "ratio_of_medians": {a: med[a] / med["plain"] for a in ARMS[1:]},
        "median_paired_ratio": paired,
        "apply_median_s": apply_med,
        "apply_over_plain_step": apply_med / med["plain"],
        "cpu_median_step_s": cpu_med,
        "cpu_ratio_of_medians": {a: cpu_med[a] / cpu_med["plain"] for a in ARMS[1:]},
        "times_s": times,
        "cpu_times_s": cpu_times,
        "apply_vs_whole_tensor_foreach_median_s": {k: statistics.median(v) for k, v in pair.items()},
    }
    results["target_overhead_at_most_3pct"] = {  # three estimates of the same thing, from noisy to precise
        "ratio_of_medians": results["ratio_of_medians"]["masked"] <= 1.03,
        "median_paired_ratio": paired["masked"] <= 1.03,
        "apply_alone_over_plain_step": apply_med / med["plain"] <= 0.03}
    print(f"{'arm':<14}{'median step s':>14}{'x plain':>9}{'paired':>9}{'cpu s':>9}{'x plain':>9}")
    for a in ARMS:
        print(f"{a:<14}{med[a]:>14.4f}{med[a] / med['plain']:>9.4f}{paired.get(a, 1.0):>9.4f}"
              f"{cpu_med[a]:>9.4f}{cpu_med[a] / cpu_med['plain']:>9.4f}")
    print(f"FixedMask.apply() alone: {1e3 * apply_med:.2f} ms = {100 * apply_med / med['plain']:.2f}% of a plain step")
    print("apply() vs whole-tensor _foreach_mul_, alternated: " + ", ".join(
        f"{k} {1e3 * v:.2f} ms" for k, v in results["apply_vs_whole_tensor_foreach_median_s"].items()))
    path = Path(args.out) / f"overhead_{args.model}_{dev.split(':')[0]}{'_bf16' if args.amp == 'bf16' else ''}.json"
    write_json(path, record("mask_overhead", args, results, dev))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
