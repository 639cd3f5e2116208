"""Benchmark: training images per second of the data pipeline per DataLoader worker, on real JPEGs with the
paper's augmentation, so users can size train.num_workers (data.num_workers) for their GPUs.

    python scripts/make_imagefolder.py --out outputs/mnist_imagenet
    python scripts/bench_data.py --root outputs/mnist_imagenet --workers 1 2 4 8
    python scripts/bench_data.py --root /data/imagenet --workers 8 16 --images 8192    # real ImageNet

The dataset and transform are train.py's for data=imagenet (dimap.training.data: ImageFolder, timm's
RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, colour jitter, random erasing, at 224), read from
conf/data/imagenet.yaml. For each worker count, --images images are loaded in batches of --batch, alternating
the counts over --repeats. Steady state = the second half of the batches (worker start-up and the first batches,
prepared in parallel, excluded). Per-worker rate = steady images/s / workers (workers 0 = the main process
alone). Writes OUT/data_pipeline.json.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_masks import ROOT, record  # noqa: E402

from dimap.report import write_json  # noqa: E402
from dimap.training.data import build_datasets  # noqa: E402


def load_once(dataset, workers: int, batch: int, images: int, seed: int) -> dict:
    """Load `images` training images (rounded down to whole batches); timings and the number actually seen."""
    sampler = RandomSampler(dataset, num_samples=images, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True)
    t0, arrivals, sizes = time.perf_counter(), [], []
    for x, _ in loader:
        arrivals.append(time.perf_counter())
        sizes.append(len(x))
    # steady state: the second half of the batches (by then the workers' first, parallel batches are consumed)
    start = max(1, len(arrivals) // 2) - 1
    steady, steady_s = sum(sizes[start + 1:]), arrivals[-1] - arrivals[start]
    return {"images": sum(sizes), "batches": len(sizes), "total_s": arrivals[-1] - t0,
            "first_batch_s": arrivals[0] - t0, "steady_images": steady, "steady_s": steady_s,
            "steady_images_per_s": steady / steady_s if steady else float("nan"), "image_shape": list(x.shape[1:])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="an ImageNet-style folder with train/ and val/")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=1024, help="images per worker count and repeat")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--img-size", type=int, default=None, help="default: conf/data/imagenet.yaml (224)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = p.parse_args(argv)
    if args.images < 2 * args.batch:
        p.error(f"--images {args.images} must be at least two batches of {args.batch} (one is start-up)")

    data = yaml.safe_load((ROOT / "conf" / "data" / "imagenet.yaml").read_text())
    data["root"] = args.root
    if args.img_size:
        data["img_size"] = args.img_size
    train, _, num_classes = build_datasets(data)
    torch.set_num_threads(1)  # workers=0 then uses one core, as each worker does (DataLoader sets 1 thread there)
    print(f"{len(train)} training images in {num_classes} classes under {args.root}; batch {args.batch}, "
          f"{args.images} images per run, workers {args.workers}, {args.repeats} repeat(s)")

    runs = {w: [] for w in args.workers}
    for r in range(args.repeats):
        order = args.workers if r % 2 == 0 else args.workers[::-1]
        for w in order:
            runs[w].append(load_once(train, w, args.batch, args.images, args.seed + r))
            last = runs[w][-1]
            print(f"  workers {w}: {last['steady_images_per_s']:.1f} images/s steady "
                  f"(first batch {last['first_batch_s']:.2f} s)", flush=True)
    results = {"train_images": len(train), "num_classes": num_classes, "augmentation": data["aug"],
               "img_size": data["img_size"], "transform": str(train.transform), "workers": {}}
    for w, rs in runs.items():
        rate = statistics.median(x["steady_images_per_s"] for x in rs)
        results["workers"][str(w)] = {"median_images_per_s": rate, "images_per_s_per_worker": rate / max(w, 1),
                                      "runs": rs}
    print(f"{'workers':>8}{'images/s':>10}{'per worker':>12}")
    for w, v in results["workers"].items():
        print(f"{w:>8}{v['median_images_per_s']:>10.1f}{v['images_per_s_per_worker']:>12.1f}")
    path = Path(args.out) / "data_pipeline.json"
    write_json(path, record("data_pipeline", args, results, "cpu"))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
