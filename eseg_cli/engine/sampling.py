"""Resumable sampling: a DistributedSampler that can start mid-epoch, and per-sample seeded augmentation.

Augmentation randomness is a function of (seed, epoch, sample index) only, so a run resumed mid-epoch,
or split over any number of processes and loader workers, sees exactly the same crops and flips.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (also for one process) whose epoch can start at batch ``start_batch``."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 batch_size: int = 1):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.start = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.set_epoch(epoch)
        self.start = start_batch * self.batch_size

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 12_345) % (2 ** 31 - 1)


class SeededDataset(Dataset):
    """Wrap a dataset so each item's augmentation is seeded by (seed, epoch, index).

    Seeds the dataset's albumentations pipeline (``transform.set_random_seed``) and, inside a saved/restored
    scope, Python's, numpy's and torch's global generators.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        s = sample_seed(self.seed, self.epoch, index)
        tf = getattr(self.dataset, "transform", None)
        if tf is not None and hasattr(tf, "set_random_seed"):
            tf.set_random_seed(s)
        py, npst = random.getstate(), np.random.get_state()
        random.seed(s)
        np.random.seed(s)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            item = self.dataset[index]
        random.setstate(py)
        np.random.set_state(npst)
        return item
