"""Batch sampling: which training rows go into which batch, in which order."""

from __future__ import annotations

from collections.abc import Iterator


class EpochShuffleSampler:
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
