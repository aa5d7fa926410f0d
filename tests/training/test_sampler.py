"""The epoch plan: plain slices without duplicates, the duplicate rule with them."""

from __future__ import annotations

import numpy as np
import pytest

from lmembed.data.sampler import batch_indices, epoch_plan, steps_per_epoch


def _plain(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    per = steps_per_epoch(n, batch_size)
    return [batch_indices(n, batch_size, seed, epoch * per + b) for b in range(per)]


@pytest.mark.parametrize(("n", "batch_size"), [(100, 32), (96, 32), (5, 8)])
def test_unique_keys_leave_the_plain_slices(n: int, batch_size: int) -> None:
    keys = (np.arange(n, dtype=np.uint32), np.arange(n, dtype=np.uint32)[::-1].copy())
    plan = epoch_plan(n, batch_size, seed=3, epoch=2, keys=keys)
    assert [b.tolist() for b in plan.batches] == _plain(n, batch_size, 3, 2)
    assert (plan.deferred, plan.left_out) == (0, 0)


def test_duplicates_are_deferred_not_lost() -> None:
    n, batch_size = 300, 16
    key = (np.arange(n) % 97).astype(np.uint32)  # about 3 copies of each
    plan = epoch_plan(n, batch_size, seed=0, epoch=0, keys=(key,))
    assert len(plan.batches) == steps_per_epoch(n, batch_size)
    assert plan.deferred > 0
    for batch in plan.batches:
        assert len(set(key[batch].tolist())) == len(batch)
    used = np.concatenate(plan.batches)
    assert len(set(used.tolist())) == len(used) == n - plan.left_out
    # batches before the first conflict are today's slices
    plain = _plain(n, batch_size, 0, 0)
    same = next(i for i, b in enumerate(plan.batches) if b.tolist() != plain[i])
    assert all(len(set(key[plain[i]].tolist())) == batch_size for i in range(same))


def test_one_key_everywhere_stays_fast_and_counts_left_out() -> None:
    n = 20_000
    plan = epoch_plan(n, 32, seed=0, epoch=0, keys=(np.zeros(n, dtype=np.uint32),))
    assert all(len(b) == 1 for b in plan.batches)
    assert plan.left_out == n - len(plan.batches)
