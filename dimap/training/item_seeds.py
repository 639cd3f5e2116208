"""The augmentation of each training image as a function of (seed, epoch, image index) only.

A DataLoader's workers draw their random crops from streams seeded once per worker: which worker augments an
image depends on the batch's position in the iterator, so a run resumed mid-epoch (whose iterator starts at the
resumed step) or run with another num_workers sees other crops. Seeding torch, numpy and `random` for every item
from (seed, epoch, index) makes the batches of a resumed run, of any worker count, those of an uninterrupted one.
The streams of the process that calls are restored after each item: without workers that is the main process,
whose own draws (Mixup/CutMix, drop path) are checkpointed and must not move with the data.
"""
import random

import numpy as np
import torch
from torch.utils.data import Dataset


def item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, np.uint64)[0] >> 1)


class PerImageSeeds(Dataset):
    """`dataset` whose item i of epoch e is drawn under the seed item_seed(seed, e, i); set_epoch(e) before the
    epoch's iterator is made (dimap.training.samplers.EpochSeededSampler.set_epoch does)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):  # classes, samples, ...: the wrapped dataset's
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        s = item_seed(self.seed, self.epoch, index)
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            np.random.seed(s % 2**32)
            random.seed(s)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)
