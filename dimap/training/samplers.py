"""Samplers of the loaders: the train sampler seeded per (seed, epoch, rank) and resumable mid-epoch, and the
evaluation sampler that shards without padding, so every validation image counts exactly once."""
import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler


class EpochSeededSampler(DistributedSampler):
    """DistributedSampler whose set_epoch(epoch) also reseeds `generator`, the train DataLoader's, from
    (seed, epoch, rank). With workers, the loader draws their base seed from that generator when an epoch's iterator
    starts, so the augmentation of every epoch is a pure function of (seed, epoch, rank, worker) and a run resumed
    at epoch e sees the same random crops as one never interrupted, with any num_workers."""

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int, generator: torch.Generator, **kwargs):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed, **kwargs)
        self.generator = generator
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):  # PerImageSeeds: each image's augmentation from (seed, epoch, index)
            self.dataset.set_epoch(epoch)
        entropy = [int(self.seed), int(epoch), int(self.rank)]
        self.generator.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1)


class ShardedEvalSampler(Sampler):
    """Rank r gets indices r, r + world_size, ...: no padding, so summing correct counts over ranks with
    all_reduce counts every validation image exactly once (DistributedSampler would repeat some)."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0):
        self.indices = list(range(len(dataset)))[rank::num_replicas]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class ResumableSampler(EpochSeededSampler):
    """EpochSeededSampler that can start an epoch part-way: after set_epoch(e), set_start(n) skips this rank's
    first n samples of epoch e (those an interrupted run already trained on) without loading them."""

    start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def set_start(self, n: int) -> None:
        self.start = int(n)

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
