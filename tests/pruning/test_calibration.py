"""Calibration images: distinct training images drawn by the seed, through the evaluation transform, recorded."""
import pytest
import torch

from dimap.errors import UserError
from dimap.pruning.calibration import check_calibration_config, draw_calibration
from dimap.training.calibration_data import calibration_dataset
from dimap.training.data import build_datasets

MNIST = {"name": "mnist5k", "img_size": 32, "in_chans": 1, "val_size": 1000, "split_seed": 0}


def test_draw_is_distinct_sorted_and_seeded():
    data = [(torch.full((1, 2, 2), float(i)), 0) for i in range(50)]
    a, b, c = draw_calibration(data, 10, seed=3), draw_calibration(data, 10, seed=3), draw_calibration(data, 10, seed=4)
    assert a.indices == b.indices != c.indices
    assert len(set(a.indices)) == 10 and a.indices == sorted(a.indices)
    assert a.images[:, 0, 0, 0].tolist() == [float(i) for i in a.indices]
    every = draw_calibration(data, 4096, seed=0)  # more than the split holds: all of it, recorded as such
    assert every.indices == list(range(50)) and every.record()["images"] == 50 and every.record()["requested"] == 4096
    assert [len(x) for x in draw_calibration(data, 10, batch_size=4).batches()] == [4, 4, 2]


def test_mnist_calibration_is_the_training_split_without_augmentation():
    train, _, _ = build_datasets(MNIST)
    cal = calibration_dataset(MNIST)
    assert torch.equal(cal.indices, train.indices)  # the training images, not the validation ones
    assert cal.transform is None and train.transform is not None  # evaluation transform: no random shift
    assert torch.equal(cal[7][0], cal[7][0])


def test_bad_settings_are_one_sentence():
    assert check_calibration_config(None) == {"images": 4096, "seed": 0, "batch_size": 256}
    for bad in ({"images": 0}, {"seed": -1}, {"batch_size": 1.5}, {"images": True}):
        with pytest.raises(UserError, match="prune.calibration."):
            check_calibration_config(bad)
