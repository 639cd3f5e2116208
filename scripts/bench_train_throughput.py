"""Benchmark: finetuning throughput of our engine against a bare PyTorch loop, same model, batch, dtype and data.

    torchrun --nproc_per_node=1 scripts/bench_train_throughput.py --device cuda --amp bf16   # Swin-T, 224, batch 128
    python scripts/bench_train_throughput.py --model swin_nano --batch 8 --steps 3 --repeats 2   # CPU smoke size

Arms, alternated over --repeats (order reversed every other repeat), --steps optimizer steps each, images/s =
steps x batch / wall time (CUDA synchronised around each arm):
- bare: for each batch: copy to the device, forward and loss under autocast, backward, torch AdamW step,
  zero_grad. What one would write by hand on one GPU.
- engine: dimap.training.engine.train_one_epoch as train.py runs it: the paper recipe's optimizer
  (dimap.training.recipe.build_optimizer) and gradient clipping, the DIMAP mask held by FixedMask, the model
  wrapped by dimap.training.distributed.wrap_ddp, the progress bar on rank 0. Under torchrun the process group
  is the one train.py creates (init_distributed), so its collectives run too (NCCL on CUDA).
Both arms share one DIMAP-pruned model (random init, no drop path; Mixup off in both: it is data-side) and the
same --num-batches in-memory batches (pinned on CUDA). The ratio engine / bare is the median of the engine's
images/s over the bare loop's (goal: >= 0.95). Writes OUT/train_throughput_<model>_<device>[_bf16].json.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_masks import ROOT, build_model, model_input, record  # noqa: E402

from dimap.pruning.masks import FixedMask, apply_masks, compute_masks  # noqa: E402
from dimap.report import write_json  # noqa: E402
from dimap.training.distributed import cleanup, init_distributed, is_dist, is_main, wrap_ddp  # noqa: E402
from dimap.training.engine import train_one_epoch  # noqa: E402
from dimap.training.recipe import autocast, build_optimizer  # noqa: E402

ARMS = ["bare", "engine"]


class InMemoryBatches:
    """`steps` batches cycled from a fixed list (a loader for train_one_epoch)."""

    def __init__(self, batches, steps: int):
        self.batches, self.steps = batches, steps

    def __len__(self):
        return self.steps

    def __iter__(self):
        for i in range(self.steps):
            yield self.batches[i % len(self.batches)]


class CountingLoss(torch.nn.CrossEntropyLoss):
    """Cross-entropy that counts the images it was computed on: what each arm really trained on."""

    images = 0

    def forward(self, logits, targets):
        self.images += len(targets)
        return super().forward(logits, targets)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="swin_t", help="conf/model name: swin_nano, swin_t, swin_s, swin_b")
    p.add_argument("--batch", type=int, default=128, help="per process")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per arm and repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup-steps", type=int, default=3, help="per arm, once, untimed")
    p.add_argument("--num-batches", type=int, default=4, help="distinct in-memory batches, cycled")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--amp", default="bf16", choices=["bf16", "none"], help="CUDA only; CPU runs fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--clip-grad", type=float, default=None, help="default: the paper recipe's (conf/train/paper.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar in the engine arm (train.py shows one)")
    p.add_argument("--ratio", type=float, default=0.55)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = p.parse_args(argv)

    device, rank, world = init_distributed(args.device)
    try:
        return run(args, device, world)
    finally:
        cleanup()


def run(args, device: torch.device, world: int) -> dict:
    recipe = yaml.safe_load((ROOT / "conf" / "train" / "paper.yaml").read_text())
    clip = recipe["clip_grad"] if args.clip_grad is None else args.clip_grad
    dtype = torch.bfloat16 if args.amp == "bf16" and device.type == "cuda" else None
    torch.backends.cudnn.benchmark = device.type == "cuda"

    model = build_model(args.model, args.seed).to(device).train()
    masks = compute_masks(model, "dimap", args.ratio)
    apply_masks(model, masks)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    fixed = FixedMask(model, masks)
    engine_model = wrap_ddp(model, device)
    bare_opt = torch.optim.AdamW(model.parameters(), lr=float(recipe["lr"]), weight_decay=float(recipe["weight_decay"]))
    engine_opt = build_optimizer(model, recipe, float(recipe["lr"]))
    criterion = CountingLoss()
    torch.manual_seed(args.seed)
    pin = device.type == "cuda"
    batches = [(model_input(args.model, args.batch), torch.randint(0, model.num_classes, (args.batch,)))
               for _ in range(args.num_batches)]
    if pin:
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]

    def bare(steps: int) -> None:
        for i in range(steps):
            x, y = batches[i % len(batches)]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                loss = criterion(model(x), y)
            loss.backward()
            bare_opt.step()
            bare_opt.zero_grad(set_to_none=True)

    def engine(steps: int) -> None:
        train_one_epoch(engine_model, criterion, InMemoryBatches(batches, steps), engine_opt, device, 0,
                        amp_dtype=dtype, clip_grad=clip, fixed_mask=fixed, channels_last=args.channels_last,
                        progress=is_main() and not args.no_progress)

    arms = {"bare": bare, "engine": engine}

    def timed(arm: str, steps: int) -> tuple[float, int]:
        sync(device)
        t0, seen = time.perf_counter(), criterion.images
        arms[arm](steps)
        sync(device)
        return time.perf_counter() - t0, criterion.images - seen

    log = print if is_main() else (lambda *a, **k: None)
    log(f"{args.model}: batch {args.batch}, {args.steps} steps x {args.repeats} repeats per arm, device {device}, "
        f"amp {args.amp if dtype else 'none (fp32)'}, channels_last {args.channels_last}, world {world}, "
        f"process group {is_dist()}, engine model {type(engine_model).__name__}, clip_grad {clip}")
    for arm in ARMS:
        timed(arm, args.warmup_steps)
    seconds, images = {a: [] for a in ARMS}, {a: [] for a in ARMS}
    for r in range(args.repeats):
        for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
            t, n = timed(arm, args.steps)
            seconds[arm].append(t)
            images[arm].append(n)
        log(f"  repeat {r + 1}: " + ", ".join(f"{a} {images[a][-1] / seconds[a][-1]:.1f} images/s" for a in ARMS),
            flush=True)
    engine(1)  # the bare arm lets pruned weights regrow; one engine step must zero them all again
    violations = fixed.violations()
    rate = {a: [n / t for n, t in zip(images[a], seconds[a])] for a in ARMS}
    med = {a: statistics.median(v) for a, v in rate.items()}
    results = {
        "images_per_s": {a: {"median": med[a], "runs": rate[a], "seconds": seconds[a], "images": images[a]}
                         for a in ARMS},
        "engine_over_bare": med["engine"] / med["bare"],
        "median_paired_ratio": statistics.median(e / b for e, b in zip(rate["engine"], rate["bare"])),
        "goal_at_least_0.95": med["engine"] / med["bare"] >= 0.95,
        "world_size": world, "process_group": is_dist(), "engine_model": type(engine_model).__name__,
        "amp_dtype": str(dtype), "clip_grad": clip, "masked_weights": sum(m.numel() for m in masks.values()),
        "mask_violations_at_end": violations,
        "optimizers": {"bare": type(bare_opt).__name__, "engine": type(engine_opt).__name__},
    }
    log(f"{'arm':<8}{'images/s':>12}\n" + "\n".join(f"{a:<8}{med[a]:>12.1f}" for a in ARMS))
    log(f"engine / bare = {results['engine_over_bare']:.3f} (paired {results['median_paired_ratio']:.3f}; "
        "goal >= 0.95)")
    if is_main():
        name = f"train_throughput_{args.model}_{device.type}{'_bf16' if dtype else ''}.json"
        path = Path(args.out) / name
        write_json(path, record("train_throughput", args, results, str(device)))
        log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
