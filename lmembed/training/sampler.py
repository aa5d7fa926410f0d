"""Deterministic batch order: a pure function of (seed, step).

Each epoch is a fresh permutation seeded by ``seed + epoch``; step ``s`` takes
slice ``s % steps_per_epoch`` of it. No state to save, so resuming at step ``s``
sees exactly the batches an uninterrupted run would, and every triplet is used
once per epoch (the last batch of an epoch may be smaller).

Under ``torchrun`` every rank draws the same global batch and keeps a
contiguous shard of it (``shard_sizes``): the shards partition the batch, so no
triplet is dropped or seen twice, whatever the world size.
"""

from __future__ import annotations

import functools
import math

import torch


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    epoch, position = divmod(step, steps_per_epoch(n_examples, batch_size))
    order = _epoch_order(n_examples, seed, epoch)
    return order[position * batch_size : (position + 1) * batch_size].tolist()


def shard_sizes(batch_len: int, world_size: int) -> list[int]:
    """Per-rank share of a batch: equal, the first ``batch_len % world_size`` ranks one more."""
    base, extra = divmod(batch_len, world_size)
    return [base + (rank < extra) for rank in range(world_size)]


@functools.lru_cache(maxsize=2)
def _epoch_order(n_examples: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch))
