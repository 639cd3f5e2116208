"""Calibration images for the data-aware baselines (docs/baselines.md): a few images from the TRAINING split of the
run's dataset, seen through the EVALUATION transform, drawn with a fixed seed.

Wanda's image-classifier code (locuslab/wanda, image_classifiers/main.py) draws `--nsamples 4096` training images
with `np.random.seed(0)`; `DEFAULT_IMAGES` is that count. Two decisions differ from it, both recorded in
summary.json: we draw without replacement (its `np.random.choice` draws with replacement, so some images count
twice), taking every image when the split is smaller than the count asked for; and we use the evaluation transform
(resize + centre crop, no augmentation), so the statistics describe the images the model is evaluated on and do not
depend on the random augmentation state. The criteria see only `batches()`; the data set itself is anything that
returns (image tensor, label) pairs (`dimap.training.data.calibration_dataset` builds it from a data config).
"""
from dataclasses import dataclass

import numpy as np
import torch

from dimap.errors import UserError

DEFAULT_IMAGES = 4096  # locuslab/wanda image_classifiers/main.py: --nsamples default
DEFAULT_SEED = 0  # ibid.: np.random.seed(0) before drawing the calibration ids
DEFAULT_BATCH = 256  # ibid. (prune_utils.py): calibration images go through a block 256 at a time


@dataclass
class Calibration:
    """`images` (N, C, H, W) on the CPU, the dataset `indices` they came from, and how they were drawn."""

    images: torch.Tensor
    indices: list[int]
    seed: int
    requested: int
    batch_size: int = DEFAULT_BATCH

    def batches(self, device: torch.device | str = "cpu"):
        """The images in order, `batch_size` at a time, on `device` (a fresh iterator per call)."""
        for i in range(0, len(self.images), self.batch_size):
            yield self.images[i:i + self.batch_size].to(device)

    def record(self) -> dict:
        """What summary.json records: enough to draw the same images again."""
        return {"images": len(self.indices), "requested": self.requested, "seed": self.seed, "split": "train",
                "transform": "evaluation", "batch_size": self.batch_size}


def check_calibration_config(cfg: dict | None) -> dict:
    """prune.calibration as {images, seed, batch_size} with defaults filled in; a bad value is one sentence."""
    cfg = dict(cfg or {})
    out = {"images": cfg.get("images", DEFAULT_IMAGES), "seed": cfg.get("seed", DEFAULT_SEED),
           "batch_size": cfg.get("batch_size", DEFAULT_BATCH)}
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
            raise UserError(f"prune.calibration.{key}={value!r} must be a whole number "
                            f"{'>= 0' if key == 'seed' else '>= 1'}: pass e.g. prune.calibration.{key}="
                            f"{ {'images': DEFAULT_IMAGES, 'seed': DEFAULT_SEED, 'batch_size': DEFAULT_BATCH}[key] }")
    return out


def draw_calibration(dataset, images: int = DEFAULT_IMAGES, seed: int = DEFAULT_SEED,
                     batch_size: int = DEFAULT_BATCH) -> Calibration:
    """`images` distinct images of `dataset` (all of them if it has fewer), chosen by a numpy generator seeded with
    `seed`, in ascending index order; labels are dropped (no criterion here uses them)."""
    n = len(dataset)
    if n == 0:
        raise UserError("the training split has no images to calibrate on: point data.root at a folder with train/")
    if images >= n:
        indices = list(range(n))
    else:
        indices = sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=images, replace=False))
    stacked = torch.stack([torch.as_tensor(dataset[i][0]) for i in indices])
    return Calibration(stacked, indices, seed, images, batch_size)
