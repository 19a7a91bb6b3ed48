"""Deterministic, resumable data order and augmentation.

``EpochSampler`` yields ``(index, sample_seed)`` pairs: the order of an epoch is a pure function
of (seed, epoch, rank, world size), and ``set_start`` skips the items a killed run already
consumed. ``SeededDataset`` runs each sample's transform under its own seed, so augmentation
does not depend on the number of loader workers or on what the main process drew before — with
both, a run resumed mid-epoch sees exactly the batches an uninterrupted run would have seen.

Repeated augmentation (DeiT): with ``repeats = r`` each image appears r times per epoch, the
copies spread over ranks and drawn with different seeds; each rank still gets
``ceil(num_samples / world_size)`` items, so an epoch costs the same as without repeats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .rng import seeded_rng


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """A 32-bit seed for one draw, well mixed from its coordinates."""
    return int(np.random.SeedSequence([seed, epoch, rank, position]).generate_state(1)[0])


class EpochSampler(Sampler):
    """This rank's share of one epoch, as ``(dataset index, sample seed)`` pairs.

    Args:
        num_samples: dataset length.
        rank, world_size: this process and the number of processes.
        shuffle: permute each epoch (seeded by ``seed`` and the epoch).
        repeats: repeated-augmentation count (1 = off); needs ``pad``.
        pad: wrap around so every rank gets the same count (training). With ``pad=False``
            (evaluation) rank r gets items r, r + world_size, …: every item exactly once.
        seed: base seed of the order and of the per-sample seeds.
    """

    def __init__(
        self,
        num_samples: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        repeats: int = 1,
        pad: bool = True,
        seed: int = 0,
    ):
        if num_samples <= 0:
            raise ValueError(f"EpochSampler needs a non-empty dataset, got num_samples={num_samples}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if repeats < 1 or (repeats > 1 and not pad):
            raise ValueError(f"repeats must be >= 1 and needs pad=True, got repeats={repeats}, pad={pad}")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.shuffle, self.repeats, self.pad, self.seed = shuffle, repeats, pad, seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def set_start(self, position: int) -> None:
        """Skip the first ``position`` items of this rank's epoch (resuming mid-epoch)."""
        if not 0 <= position <= self.epoch_length():
            raise ValueError(f"start position {position} outside [0, {self.epoch_length()}]")
        self.start = position

    def epoch_length(self) -> int:
        if not self.pad:
            return len(range(self.rank, self.num_samples, self.world_size))
        return math.ceil(self.num_samples / self.world_size)

    def epoch_indices(self) -> list[int]:
        """This rank's dataset indices for the whole current epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        if not self.pad:
            return order[self.rank :: self.world_size].tolist()
        order = order.repeat_interleave(self.repeats)
        total = math.ceil(len(order) / self.world_size) * self.world_size
        order = order.repeat(math.ceil(total / len(order)))[:total]  # wrap around (pad)
        return order[self.rank :: self.world_size][: self.epoch_length()].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.epoch_indices()
        for pos in range(self.start, len(indices)):
            yield indices[pos], sample_seed(self.seed, self.epoch, self.rank, pos)

    def __len__(self) -> int:
        return self.epoch_length() - self.start


class SeededDataset(Dataset):
    """Wrap a map-style dataset so that ``ds[(index, seed)]`` loads item ``index`` with every
    global RNG seeded by ``seed`` (and restored afterwards). A bare index loads it unseeded."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        if isinstance(item, tuple):
            index, seed = item
            with seeded_rng(seed):
                return self.dataset[index]
        return self.dataset[item]
