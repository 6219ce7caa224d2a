"""The training order: seeded per epoch, and with data.group_by_length, batches of similar
length (less padding) whose order is still shuffled."""

from __future__ import annotations

import random

from pefttool.sampling import EpochShuffleSampler, LengthGroupedSampler


def batches_of(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def real_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return real / padded


def test_grouped_batches_hold_every_row_once_and_waste_less_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 64) for _ in range(1000)]
    grouped = LengthGroupedSampler(lengths, batch_size=32, seed=7)
    plain = EpochShuffleSampler(len(lengths), seed=7)
    order = list(grouped)
    assert sorted(order) == list(range(1000))
    batches = batches_of(order, 32)
    assert all(len(b) == 32 for b in batches[:-1]) and len(batches[-1]) == 1000 % 32
    assert real_fraction(batches, lengths) > 0.9 > real_fraction(batches_of(list(plain), 32), lengths)


def test_the_order_depends_only_on_seed_and_epoch():
    lengths = list(range(200))
    a, b = LengthGroupedSampler(lengths, 8, seed=1), LengthGroupedSampler(lengths, 8, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    # shuffled between groups: the batches do not come longest first
    first = [max(lengths[i] for i in batch) for batch in batches_of(list(a), 8)[:-1]]
    assert first != sorted(first, reverse=True)
