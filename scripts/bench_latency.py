"""Benchmark: forward latency of dense vs DIMAP-pruned Swin, and what real sparse kernels make of the masks.

    python scripts/bench_latency.py                                  # Swin-T/S/B, CPU: batch 1 and 16
    python scripts/bench_latency.py --models swin_t --batch-sizes 1 64 --csr-ratios 0.55 0.9
    python scripts/bench_latency.py --device cuda                    # bf16 autocast, batch 1 and 64, 2:4 kernels

Arms, timed alternately (rotating order) in one process, median of --repeats forwards:
- dense: the unpruned model.
- dimap_rR: the DIMAP-pruned model as it is trained and shipped: zeros in dense weight matrices. It runs the
  very same dense matmuls, so it cannot be faster (unstructured sparsity needs sparse kernels).
- csr_rR (CPU): every prunable nn.Linear replaced by `SparseLinear` (CSR weight, MKL sparse x dense addmm).
- semi24_rR (CUDA, compute capability >= 8.0): prunable layers as `SparseSemiStructuredTensor` (2:4) weights.
  2:4 is a different mask from DIMAP's; the weights it would drop are counted below.
2:4 projection (any device, no GPU needed): in every group of 4 consecutive weights along the input dimension
of a prunable (out x in) matrix, keep the 2 with the largest |w| among the DIMAP-kept ones (ties: lower index
first); DIMAP-removed weights stay removed. Reported per module and in total, at each DIMAP ratio: the DIMAP-kept
weights the projection drops (count, share of kept weights, share of the kept weights' squared magnitude).
Writes OUT/latency_<device>.json and prints a table.
"""
import argparse
import copy
import warnings
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_masks import ROOT, build_model, model_input, record  # noqa: E402

from dimap.pruning.masks import apply_masks, compute_masks  # noqa: E402
from dimap.pruning.modules import PRUNABLE_MODULES, module_map  # noqa: E402
from dimap.pruning.patterns import nm_masks  # noqa: E402
from dimap.pruning.semi_structured import SemiStructuredLinear, replace_linears, unavailable_reason  # noqa: E402
from dimap.report import write_json  # noqa: E402


class SparseLinear(nn.Module):
    """nn.Linear with its weight stored as CSR; y = b + x W^T by a sparse x dense addmm (MKL on CPU)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            self.weight = linear.weight.detach().to_sparse_csr()
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        self.bias = bias.detach()[:, None].clone()

    def forward(self, x):
        y = torch.addmm(self.bias, self.weight, x.reshape(-1, x.shape[-1]).t()).t()
        return y.reshape(*x.shape[:-1], y.shape[-1])


def two_four_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 2:4 projection of a DIMAP-masked (out x in) matrix: per 4 consecutive inputs keep the 2 largest
    |w| among the kept weights (dimap.pruning.patterns.nm_masks: ties, the lower index removed first)."""
    return nm_masks(weight.detach().abs() * mask, 2, 4)


def two_four_report(model: nn.Module, masks: dict) -> dict:
    """DIMAP-kept weights that a 2:4 projection drops, per module and in total."""
    params, module_of = dict(model.named_parameters()), module_map(model)
    rows = {m: {"kept": 0, "dropped": 0, "kept_sq": 0.0, "dropped_sq": 0.0} for m in PRUNABLE_MODULES}
    for name, mask in masks.items():
        w = params[name].detach().cpu()
        m = mask.cpu()
        dropped = m & ~two_four_mask(w, m)
        sq = w.double().square()
        row = rows[module_of[name]]
        row["kept"] += int(m.sum())
        row["dropped"] += int(dropped.sum())
        row["kept_sq"] += float(sq[m].sum())
        row["dropped_sq"] += float(sq[dropped].sum())
    rows["total"] = {k: sum(r[k] for r in rows.values()) for k in ("kept", "dropped", "kept_sq", "dropped_sq")}
    for r in rows.values():
        r["dropped_of_kept"] = r["dropped"] / max(r["kept"], 1)
        r["dropped_sq_of_kept_sq"] = r["dropped_sq"] / r["kept_sq"] if r["kept_sq"] else 0.0
    return rows


def semi_structured_supported(device: str) -> bool:
    return unavailable_reason(device) is None


@torch.inference_mode()
def time_arms(arms: dict, x: torch.Tensor, device: str, repeats: int, warmup: int, amp: bool) -> dict:
    def forward(model):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            return model(x)

    def once(model):
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        forward(model)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    names = list(arms)
    for name in names * warmup:
        once(arms[name])
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            times[n].append(once(arms[n]))
    out = {}
    for n in names:
        med = statistics.median(times[n])
        out[n] = {"median_ms": 1e3 * med, "images_per_s": x.shape[0] / med, "times_s": times[n]}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["swin_t", "swin_s", "swin_b"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: 1 16 on CPU, 1 64 on CUDA")
    p.add_argument("--large-batch-models", nargs="+", default=None,
                   help="models timed at batch sizes above 1 (default: swin_t on CPU, where Swin-B at 16 takes "
                        "over a minute per forward; every model on CUDA)")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.15, 0.35, 0.55], help="DIMAP1/2/3")
    p.add_argument("--timed-ratio", type=float, default=0.55, help="the DIMAP ratio of the dimap_r arm")
    p.add_argument("--csr-ratios", nargs="+", type=float, default=[0.55, 0.9], help="CPU CSR arms (DIMAP masks)")
    p.add_argument("--semi-ratios", nargs="+", type=float, default=[0.55], help="CUDA 2:4 arms (DIMAP + 2:4)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--weights", default="random", help="random | hub | PATH (2:4 counts mean most with real weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = p.parse_args(argv)
    dev = args.device
    cuda = dev.startswith("cuda")
    args.batch_sizes = args.batch_sizes or ([1, 64] if cuda else [1, 16])
    args.large_batch_models = args.large_batch_models or (args.models if cuda else ["swin_t", "swin_nano"])
    print(f"device {dev}{' (bf16 autocast)' if cuda else ''}, {torch.get_num_threads()} threads, weights "
          f"{args.weights}, batch sizes {args.batch_sizes}, median of {args.repeats}")

    results = {"models": {}, "notes": [
        "dimap_r* arms are the pruned models as trained: zeros inside dense weights, the same dense matmuls, "
        "so no speed-up is expected or possible from unstructured DIMAP sparsity on dense kernels.",
        "csr_r* arms replace every prunable nn.Linear with a CSR sparse x dense matmul (CPU, MKL).",
        "semi24_r* arms (CUDA) use 2:4 semi-structured kernels on DIMAP masks projected to 2:4, a different "
        "mask: see two_four for the DIMAP-kept weights that projection drops."]}
    for short in args.models:
        model = build_model(short, args.seed, args.weights)
        all_ratios = sorted(set(args.ratios) | set(args.csr_ratios) | {args.timed_ratio} | set(args.semi_ratios))
        masks = {r: compute_masks(model, "dimap", r) for r in all_ratios}
        two_four = {str(r): two_four_report(model, masks[r]) for r in args.ratios}
        entry = {"two_four": two_four, "batches": {}}
        for r in args.ratios:
            t = two_four[str(r)]["total"]
            print(f"{short} DIMAP r={r}: a 2:4 projection drops {t['dropped']:,} of {t['kept']:,} kept weights "
                  f"({100 * t['dropped_of_kept']:.1f}%, {100 * t['dropped_sq_of_kept_sq']:.1f}% of their |w|^2)")

        def pruned(r):
            m = copy.deepcopy(model)
            apply_masks(m, masks[r])
            return m

        arms = {"dense": model, f"dimap_r{args.timed_ratio}": pruned(args.timed_ratio)}
        if not cuda:
            for r in args.csr_ratios:
                arms[f"csr_r{r}"] = replace_linears(pruned(r), masks[r], lambda lin, n: SparseLinear(lin))
        elif semi_structured_supported(dev):
            for r in args.semi_ratios:
                converted, errors = [], {}

                def semi(lin, n, r=r):  # a layer whose shape the 2:4 kernels refuse stays dense (and masked)
                    try:
                        from torch.sparse import to_sparse_semi_structured
                        out = SemiStructuredLinear(lin, two_four_mask(lin.weight, masks[r][n].to(lin.weight.device)),
                                                   to_sparse_semi_structured, torch.bfloat16)
                        out(torch.randn(64, lin.in_features, device=lin.weight.device))
                        converted.append(n)
                        return out
                    except Exception as e:  # noqa: BLE001 - unsupported shape, dtype or build
                        errors.setdefault(f"{type(e).__name__}: {e}"[:200], []).append(n)
                        return lin

                m = replace_linears(pruned(r).to(dev), masks[r], semi)
                entry[f"semi24_r{r}_layers"] = {"converted": len(converted), "total": len(masks[r]),
                                                "errors": {k: len(v) for k, v in errors.items()}}
                print(f"  2:4 kernels on {len(converted)} of {len(masks[r])} prunable layers"
                      + (f"; refused: {list(errors)[:2]}" if errors else ""))
                if converted:
                    arms[f"semi24_r{r}"] = m
        arms = {k: v.to(dev).eval() for k, v in arms.items()}
        for b in [b for b in args.batch_sizes if b == 1 or short in args.large_batch_models]:
            x = model_input(short, b).to(dev)
            try:
                timed = time_arms(arms, x, dev, args.repeats, args.warmup, cuda)
            except RuntimeError as e:  # a 2:4 arm failing at this batch size: time without it
                semi_arms = [k for k in arms if k.startswith("semi24")]
                if not semi_arms:
                    raise
                entry[f"batch{b}_semi24_error"] = f"{type(e).__name__}: {e}"[:300]
                timed = time_arms({k: v for k, v in arms.items() if k not in semi_arms}, x, dev, args.repeats,
                                  args.warmup, cuda)
            base = timed["dense"]["median_ms"]
            for v in timed.values():
                v["speedup_vs_dense"] = base / v["median_ms"]
                # per round, every arm ran once back to back: robust to the machine's load changing
                v["paired_speedup_vs_dense"] = statistics.median(
                    d / t for d, t in zip(timed["dense"]["times_s"], v["times_s"]))
            with torch.inference_mode():  # the sparse arms compute the pruned model's function
                ref = arms[f"dimap_r{args.timed_ratio}"](x).float()
                for k, m in arms.items():
                    if k.startswith("csr_r" + str(args.timed_ratio)):
                        timed[k]["max_abs_diff_vs_dimap"] = float((m(x).float() - ref).abs().max())
            entry["batches"][str(b)] = timed
            for k, v in timed.items():
                print(f"  {short:<7} batch {b:<4} {k:<14} {v['median_ms']:>10.1f} ms {v['images_per_s']:>9.1f} img/s "
                      f"{v['speedup_vs_dense']:>6.2f}x dense (paired {v['paired_speedup_vs_dense']:.2f}x)", flush=True)
        results["models"][short] = entry
        del arms, model

    print("\n" + "\n".join("note: " + n for n in results["notes"]))
    path = Path(args.out) / f"latency_{dev.split(':')[0]}.json"
    write_json(path, record("latency", args, results, dev))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
