"""Data pipeline: the mnist5k split, item shapes, ImageNet-style folders sharded over ranks, user errors."""
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dimap.training.data import build_datasets, build_loaders
from dimap.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
MNIST = dict(name="mnist5k", img_size=32, in_chans=1, mean=[0.1307], std=[0.3081], val_size=1000, split_seed=0)


def folder_cfg(root):
    aug = dict(auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, re_prob=0.25, re_mode="pixel", re_count=1,
               hflip=0.5)
    return dict(name="imagenet", root=str(root), img_size=16, crop_pct=0.875, interpolation="bicubic",
                mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], in_chans=3, aug=aug)


def make_folder(root, per_class=(4, 3, 5), val_per_class=(2, 3, 2)):
    rng = np.random.default_rng(0)
    for split, counts in (("train", per_class), ("val", val_per_class)):
        for c, n in enumerate(counts):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_mnist_split_deterministic_stratified_disjoint():
    train, val, num_classes = build_datasets(MNIST)
    train2, val2, _ = build_datasets(MNIST)
    assert num_classes == 10 and len(train) == 4000 and len(val) == 1000
    assert torch.equal(train.indices, train2.indices) and torch.equal(val.indices, val2.indices)
    assert torch.bincount(val.labels[val.indices], minlength=10).tolist() == [100] * 10
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert not torch.equal(build_datasets(dict(MNIST, split_seed=1))[1].indices, val.indices)


def test_mnist_items():
    train, val, _ = build_datasets(MNIST)
    for ds in (train, val):
        x, y = ds[0]
        assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert train.images.dtype == torch.uint8 and train.images is val.images
    x, _ = build_datasets(dict(MNIST, in_chans=3))[1][0]
    assert x.shape == (3, 32, 32)


def test_folder_shards_cover_val_once(tmp_path):
    cfg = folder_cfg(make_folder(tmp_path))
    seen = []
    for rank in range(2):
        train_loader, val_loader, num_classes = build_loaders(cfg, 2, 3, world_size=2, rank=rank)
        assert num_classes == 3
        x, y = next(iter(train_loader))
        assert x.shape == (2, 3, 16, 16) and y.shape == (2,)
        shard = list(val_loader.sampler)
        assert len(shard) == (4, 3)[rank]  # 7 images over 2 ranks, no padding: 4 + 3
        labels = torch.cat([y for _, y in val_loader])  # the loader yields exactly this rank's shard, in order
        assert labels.tolist() == [val_loader.dataset[i][1] for i in shard]
        seen += shard
    assert sorted(seen) == list(range(7))


def test_train_order_is_function_of_seed_and_epoch():
    def order(seed, epoch):
        loader = build_loaders(MNIST, 64, 256, seed=seed)[0]
        loader.sampler.set_epoch(epoch)
        return list(loader.sampler)

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4)
    assert order(0, 3) != order(1, 3)
    loader = build_loaders(MNIST, 64, 256)[0]
    assert len(loader) == 4000 // 64


def test_worker_augmentation_depends_on_seed_and_epoch_not_on_the_epochs_before():
    """A run resumed at epoch 1 (new process, new workers, whatever its global RNG) crops exactly as one that ran
    epoch 0 first, with worker processes doing the random crops."""
    def first_batch(loader, epoch):
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[0]

    straight = build_loaders(MNIST, 64, 256, num_workers=2)[0]
    first_batch(straight, 0)
    uninterrupted = first_batch(straight, 1)
    torch.manual_seed(123)
    resumed = build_loaders(MNIST, 64, 256, num_workers=2)[0]
    assert torch.equal(first_batch(resumed, 1), uninterrupted)


def test_config_files_build(tmp_path):
    mnist = OmegaConf.load(CONF / "mnist5k.yaml")
    assert [len(ds) for ds in build_datasets(mnist)[:2]] == [4000, 1000]
    imagenet = OmegaConf.load(CONF / "imagenet.yaml")
    imagenet.merge_with({"root": str(make_folder(tmp_path)), "img_size": 16})
    train, val, num_classes = build_datasets(imagenet)
    assert num_classes == 3 and train[0][0].shape == val[0][0].shape == (3, 16, 16)


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="data.root="):
        build_datasets(folder_cfg(tmp_path / "nope"))
    with pytest.raises(UserError, match="data.root="):
        build_datasets(dict(folder_cfg(tmp_path), root=None))


def test_missing_val(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="val"):
        build_datasets(folder_cfg(tmp_path))


def test_empty_class_folder(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "class9").mkdir()
    with pytest.raises(UserError, match="class9"):
        build_datasets(folder_cfg(tmp_path))


def test_no_classes(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        build_datasets(folder_cfg(tmp_path))


def test_unknown_name():
    with pytest.raises(UserError, match="data.name"):
        build_datasets(dict(MNIST, name="cifar"))


def corrupt_folder(root):
    """make_folder plus, in train/class0, a truncated JPEG and a text file named .JPEG (3 train files unreadable
    counting a second truncated one in class1)."""
    make_folder(root)
    rng = np.random.default_rng(1)
    good = root / "train" / "class0" / "good.jpg"
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(good, quality=90)
    data = good.read_bytes()
    (root / "train" / "class0" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "train" / "class0" / "n01440764_1.JPEG").write_text("not an image, whatever the name says")
    (root / "train" / "class1" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_are_skipped_counted_and_logged_once(tmp_path, capfd, workers):
    root = corrupt_folder(tmp_path)
    cfg = {**folder_cfg(root), "max_bad_images": 3}
    train, _, _ = build_loaders(cfg, batch_size=5, eval_batch_size=4, num_workers=workers)[:3]
    for epoch in range(2):  # the second epoch meets the same files again: neither logged nor counted twice
        train.sampler.set_epoch(epoch)
        sizes = [len(y) for _, y in train]
        assert sizes == [5] * (len(train.dataset) // 5)  # replaced, not dropped: every batch full
    out = capfd.readouterr().out
    bad = sorted(line.split()[4] for line in out.splitlines() if line.startswith("warning: skipping unreadable"))
    assert bad == sorted(str(p) for p in root.glob("train/*/*") if p.name.startswith(("truncated", "n014")))
    assert train.dataset.n_bad.value == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_past_max_bad_images_the_loader_says_so_and_keeps_its_batches_full(tmp_path, workers):
    """The loader does not stop the run itself (one rank raising alone would leave the others in their next
    collective): past the limit it serves blank replacements and past_limit names the stop's one sentence, which
    the training and evaluation loops raise on every rank together (tests/test_bad_images_ranks.py)."""
    from dimap.training.image_folder import past_limit
    root = corrupt_folder(tmp_path)
    cfg = {**folder_cfg(root), "max_bad_images": 2}
    train = build_loaders(cfg, batch_size=5, eval_batch_size=4, num_workers=workers)[0]
    assert past_limit(train) is None
    sizes = [len(y) for _, y in train]
    assert sizes == [5] * (len(train.dataset) // 5)
    msg = past_limit(train)  # the count lives in shared memory: the workers' files are counted here
    assert len(msg.splitlines()) == 1 and msg.startswith(f"3 images under {root / 'train'} could not be read")
    assert "more than data.max_bad_images=2 (the last: " in msg and "raise data.max_bad_images and rerun" in msg
    assert train.dataset.n_bad.value == 3


def test_past_max_bad_images_an_epoch_and_an_evaluation_stop_at_their_end(tmp_path):
    """What stops pretraining and evaluation (no per-update agreement there), and an epoch whose last update passed
    the limit: the all-reduce each ends with carries it (a world of one here: raised at once)."""
    from dimap.training.engine import evaluate, train_one_epoch
    from dimap.training.image_folder import TooManyBadImages
    cfg = {**folder_cfg(corrupt_folder(tmp_path)), "max_bad_images": 2}
    train, _, num_classes = build_loaders(cfg, batch_size=5, eval_batch_size=4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TooManyBadImages, match="^3 images under .* more than data.max_bad_images=2"):
        train_one_epoch(model, torch.nn.CrossEntropyLoss(), train, optimizer, torch.device("cpu"), 0, progress=False)
    with pytest.raises(TooManyBadImages, match="^3 images under"):
        evaluate(model, train, torch.device("cpu"), progress=False)
    cfg["max_bad_images"] = 3  # at the limit: both run to their end
    train, _, _ = build_loaders(cfg, batch_size=5, eval_batch_size=4)
    assert train_one_epoch(model, torch.nn.CrossEntropyLoss(), train, optimizer, torch.device("cpu"), 0,
                           progress=False)["train_loss"] > 0
    assert evaluate(model, train, torch.device("cpu"), progress=False)["n"] == len(train.dataset) // 5 * 5


def test_the_papers_randaugment_can_posterize_to_zero_bits():
    """rand-m9-mstd0.5-inc1 draws magnitudes up to 10, where PosterizeIncreasing keeps 0 bits (a black image, as in
    the official recipe). Pillow 13 refuses bits=0 with a ValueError in the DataLoader worker, which would end an
    ImageNet finetune in its first epoch (31 of 20,000 transforms raised): requirements.txt pins Pillow 12."""
    from timm.data.auto_augment import rand_augment_transform
    recipe = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "data" / "imagenet.yaml").aug.auto_augment
    op = next(o for o in rand_augment_transform(recipe, {"img_mean": (124, 116, 104)}).ops
              if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
    assert np.asarray(op(Image.new("RGB", (8, 8), (100, 150, 200)))).max() == 0
