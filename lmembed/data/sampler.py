"""Deterministic batch order: a pure function of (seed, step).

Each epoch is a fresh permutation seeded by ``seed + epoch``; step ``s`` takes
slice ``s % steps_per_epoch`` of it. No state to save, so resuming at step ``s``
sees exactly the batches an uninterrupted run would, and every example is used
once per epoch (the last batch of an epoch may be smaller).

Duplicates (``epoch_plan`` with ``keys``): a batch never holds two examples with
the same key (anchor text, positive text), since the second would be a false
negative for the first. An example that would repeat a key in its batch is
deferred to the next batch where it fits (each batch first looks at the oldest
deferred examples, up to ``8 x batch_size`` of them). The epoch keeps its
``steps_per_epoch`` batches; examples still deferred when it ends sit this epoch
out and are counted. Without duplicates inside the plain slices the plan *is*
the plain slices, so dedupe changes nothing on data without repeats.

Under ``torchrun`` every rank draws the same global batch and keeps a
contiguous shard of it (``shard_sizes``): the shards partition the batch, so no
example is dropped or seen twice, whatever the world size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

_SCAN = 8  # deferred examples a batch looks at, in batch sizes
_CHUNK = 1 << 14  # examples per duplicate check


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


@dataclass(frozen=True)
class EpochPlan:
    """The batches of one epoch (example indices) and what dedupe did to them."""

    batches: list[np.ndarray]
    deferred: int = 0  # examples moved to a later batch
    left_out: int = 0  # examples still deferred when the epoch ended


def epoch_plan(
    n_examples: int,
    batch_size: int,
    seed: int,
    epoch: int,
    keys: Sequence[np.ndarray] = (),
) -> EpochPlan:
    """The batches of ``epoch``; with ``keys`` no batch repeats a key of any key array."""
    order = _epoch_order(n_examples, seed, epoch).numpy()
    n_batches = steps_per_epoch(n_examples, batch_size)
    first = _first_conflict(order, batch_size, keys)
    plain = [order[b * batch_size : (b + 1) * batch_size] for b in range(first)]
    if first == n_batches:
        return EpochPlan(plain)
    tail = order[first * batch_size :]
    rest, deferred, left_out = _greedy(tail, n_batches - first, batch_size, [k[tail] for k in keys])
    return EpochPlan(plain + rest, deferred, left_out)


def _first_conflict(order: np.ndarray, batch_size: int, keys: Sequence[np.ndarray]) -> int:
    """Index of the first plain slice holding a repeated key (the batch count if none).

    Checked a chunk of whole batches at a time, so the temporaries stay small."""
    n_batches = steps_per_epoch(len(order), batch_size)
    chunk = max(1, _CHUNK // batch_size)
    for start in range(0, n_batches, chunk):
        part = order[start * batch_size : (start + chunk) * batch_size]
        batch_of = (np.arange(len(part)) // batch_size).astype(np.uint64) << np.uint64(32)
        for key in keys:
            ranked = np.sort(batch_of | key[part])
            repeats = ranked[1:][ranked[1:] == ranked[:-1]]
            if len(repeats):
                return start + int(repeats.min() >> np.uint64(32))
    return n_batches


def _greedy(
    order: np.ndarray, n_batches: int, batch_size: int, keys: list[np.ndarray]
) -> tuple[list[np.ndarray], int, int]:
    """Fill ``n_batches`` batches from ``order``; returns (batches, deferred, left out)."""
    pending: list[int] = []  # positions into ``order``, oldest first
    deferred: set[int] = set()
    cursor, batches = 0, []
    for _ in range(n_batches):
        taken: list[int] = []
        seen: list[set[int]] = [set() for _ in keys]

        def fits(position: int, taken=taken, seen=seen) -> bool:
            if any(int(k[position]) in s for k, s in zip(keys, seen, strict=True)):
                return False
            taken.append(position)
            for k, s in zip(keys, seen, strict=True):
                s.add(int(k[position]))
            return True

        window, pending = pending[: _SCAN * batch_size], pending[_SCAN * batch_size :]
        kept = [p for p in window if len(taken) >= batch_size or not fits(p)]
        pending = kept + pending
        while len(taken) < batch_size and cursor < len(order):
            if not fits(cursor):
                pending.append(cursor)
                deferred.add(cursor)
            cursor += 1
        batches.append(order[np.array(taken, dtype=np.int64)])
    return batches, len(deferred), len(pending) + len(order) - cursor


@functools.lru_cache(maxsize=2)
def _epoch_order(n_examples: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch))
