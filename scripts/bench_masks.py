"""Benchmark: computing masks vs torch.nn.utils.prune.global_unstructured on the same layers, same amount.

    python scripts/bench_masks.py                                  # Swin-B, CPU, 5 alternated repeats
    python scripts/bench_masks.py --init laplace --repeats 3       # heavy-tailed, per-layer-scaled weights
    python scripts/bench_masks.py --model swin_t --reference       # + the straightforward oracle once, compared
    python scripts/bench_masks.py --device cuda

Each repeat times torch's global L1 pruning (on a fresh deepcopy, copied outside the timer) and every criterion
of `dimap.compute_masks`, in a rotating order, so a noisy shared machine affects all alike; medians and the
ratio to torch are printed and written to OUT/masks_<model>_<init>_<device>.json. `record` is shared by the
other benchmark scripts.
"""
import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.nn.utils import prune as torch_prune

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dimap import compute_masks, prunable_weights
from dimap.pruning import reference  # noqa: E402
from dimap.models import build_model as dimap_build_model  # noqa: E402
from dimap.provenance import git_commit, portable, versions  # noqa: E402
from dimap.report import write_json  # noqa: E402

METHODS = ["dimap", "single_module", "uniform", "global_magnitude"]


def build_model(short: str, seed: int = 0, weights: str = "random") -> torch.nn.Module:
    """The model of conf/model/<short>.yaml (swin_t, swin_s, swin_b, swin_nano); random init unless `weights`
    is 'hub' or a checkpoint path (timing does not depend on the values), no drop path."""
    cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{short}.yaml").read_text())
    torch.manual_seed(seed)
    return dimap_build_model({**cfg, "weights": weights, "drop_path_rate": 0.0}).eval()


def model_input(short: str, batch: int) -> torch.Tensor:
    cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{short}.yaml").read_text())
    return torch.randn(batch, cfg["in_chans"], cfg["img_size"], cfg["img_size"])


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg": os.getloadavg()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def record(benchmark: str, args: argparse.Namespace, results: dict, device: str) -> dict:
    # portable: paths inside the clone are recorded relative to it, so the record holds no machine's folders
    return portable({"benchmark": benchmark, "machine": machine(device), "versions": versions(),
                     "git_commit": git_commit(),
                     "command": "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
                     "config": vars(args), "seed": args.seed, "results": results}, ROOT)


def reinit(model: torch.nn.Module, init: str, seed: int) -> None:
    """Other weight distributions than timm's truncated normal (same for every layer)."""
    if init == "timm":
        return
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in prunable_weights(model).values():
            scale = 10 ** (2 * torch.rand((), generator=g) - 3)  # layers differ in scale, 1e-3 to 1e-1
            lap = torch.randn(w.shape, generator=g).sign() * -torch.log1p(-torch.rand(w.shape, generator=g)) * scale
            if init == "pruned":  # a pruned, bf16-rounded model: 40% exact zeros and many exact ties
                lap = (lap * (torch.rand(w.shape, generator=g) > 0.4)).bfloat16().float()
            w.copy_(lap)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def torch_global_l1(model: torch.nn.Module, ratio: float) -> dict[str, torch.Tensor]:
    names = list(prunable_weights(model))
    params = [(model.get_submodule(n.removesuffix(".weight")), "weight") for n in names]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=ratio)
    return {n: m.weight_mask.bool() for n, (m, _) in zip(names, params)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="swin_b", help="conf/model name: swin_t, swin_s, swin_b, swin_nano")
    p.add_argument("--ratio", type=float, default=0.55)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--init", default="timm", choices=["timm", "laplace", "pruned"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--reference", action="store_true", help="also run dimap.pruning.reference once per method, compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = p.parse_args(argv)

    model = build_model(args.model, args.seed)
    reinit(model, args.init, args.seed)
    model.to(args.device)
    n_weights = sum(w.numel() for w in prunable_weights(model).values())
    print(f"{args.model}: {n_weights / 1e6:.1f}M prunable weights, init {args.init}, ratio {args.ratio}, "
          f"device {args.device}, {args.repeats} repeats, {torch.get_num_threads()} threads")

    arms = ["torch_global_unstructured"] + args.methods
    times = {a: [] for a in arms}
    masks = {}
    for r in range(args.repeats):
        for a in arms[r % len(arms):] + arms[:r % len(arms)]:  # rotate, so no arm always runs first
            if a == "torch_global_unstructured":
                victim = copy.deepcopy(model)
                times[a].append(timed(lambda: masks.__setitem__(a, torch_global_l1(victim, args.ratio)),
                                      args.device))
                del victim
            else:
                times[a].append(timed(lambda: masks.__setitem__(a, compute_masks(model, a, args.ratio)),
                                      args.device))
        print(f"  repeat {r + 1}: " + ", ".join(f"{a} {times[a][-1]:.2f}s" for a in arms), flush=True)

    base = statistics.median(times["torch_global_unstructured"])
    results = {"prunable_weights": n_weights, "arms": {}}
    for a in arms:
        med = statistics.median(times[a])
        results["arms"][a] = {"median_s": med, "times_s": times[a], "ratio_to_torch": med / base}
    if "global_magnitude" in masks:  # the same masks, except where torch's topk breaks ties its own way
        weights, ours, theirs = prunable_weights(model), masks["global_magnitude"], masks["torch_global_unstructured"]
        differ = {n: ours[n] != theirs[n] for n in ours}
        cut = max(float(weights[n].detach().abs()[~ours[n]].max()) for n in ours if (~ours[n]).any()) \
            if any((~m).any() for m in ours.values()) else 0.0
        results["global_magnitude_vs_torch"] = {
            "differing_weights": sum(int(d.sum()) for d in differ.values()),
            "all_differences_are_ties_at_the_cut": all(
                bool((weights[n].detach().abs()[d] == cut).all()) for n, d in differ.items()),
            "same_removed_count": sum(int((~ours[n]).sum()) for n in ours) == sum(int((~theirs[n]).sum())
                                                                                 for n in ours)}
    if args.reference:
        weights = prunable_weights(model)
        results["reference"] = {}
        for a in args.methods:
            t0 = time.perf_counter()
            want = reference.CRITERIA[a](weights, args.ratio)
            elapsed = time.perf_counter() - t0
            same = all(torch.equal(masks[a][n], want[n]) for n in want)
            results["reference"][a] = {"time_s": elapsed, "identical_masks": same}
            print(f"  reference {a}: {elapsed:.2f}s, identical masks: {same}", flush=True)
    if "dimap" in args.methods:
        results["target_dimap_at_most_half_of_torch"] = results["arms"]["dimap"]["ratio_to_torch"] <= 0.5

    print(f"{'arm':<28}{'median s':>10}{'x torch':>9}")
    for a, v in results["arms"].items():
        print(f"{a:<28}{v['median_s']:>10.3f}{v['ratio_to_torch']:>9.3f}")
    device = args.device.split(":")[0]
    path = Path(args.out) / f"masks_{args.model}_{args.init}_{device}.json"
    write_json(path, record("masks", args, results, args.device))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
