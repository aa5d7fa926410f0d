"""``length_sorted_chunks``: the padding-aware plan that ``Embedder.embed`` and GradCache share."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from lmembed.model.embedder import length_sorted_chunks


def rows(lengths: list[int]) -> list[list[int]]:
    return [[7] * n for n in lengths]


def cost(ids: list[list[int]], chunks: list[list[int]], split_cost: float) -> float:
    return sum(max(len(ids[i]) for i in c) * len(c) + split_cost for c in chunks)


def brute_force(ids: list[list[int]], size: int, split_cost: float) -> float:
    """Cheapest cost over every way of cutting the length-sorted order into runs."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    best = math.inf
    for mask in itertools.product([False, True], repeat=len(order) - 1):
        cuts = [0, *[k + 1 for k, cut in enumerate(mask) if cut], len(order)]
        chunks = [order[a:b] for a, b in itertools.pairwise(cuts)]
        if all(len(c) <= size for c in chunks):
            best = min(best, cost(ids, chunks, split_cost))
    return best


@pytest.mark.parametrize("split_cost", [0.0, 3.0, 64.0, 1e12])
def test_every_position_once_longest_first_within_size(split_cost):
    ids = rows([random.Random(s).randint(1, 60) for s in range(50)])
    chunks = length_sorted_chunks(ids, 8, split_cost)
    flat = [i for chunk in chunks for i in chunk]
    assert sorted(flat) == list(range(len(ids)))
    assert [len(ids[i]) for i in flat] == sorted((len(r) for r in ids), reverse=True)
    assert all(1 <= len(chunk) <= 8 for chunk in chunks)


def test_default_keeps_the_fewest_chunks():
    ids = rows([50, 5, 6, 40, 7, 8, 9, 10, 11])
    assert len(length_sorted_chunks(ids, 4)) == math.ceil(len(ids) / 4)


def test_free_splits_remove_all_padding():
    ids = rows([3, 3, 9, 9, 9, 1, 3])
    chunks = length_sorted_chunks(ids, 32, split_cost=0.0)
    assert all(len({len(ids[i]) for i in chunk}) == 1 for chunk in chunks)


def test_plan_is_optimal_and_beats_equal_chunks():
    generator = random.Random(0)
    for _ in range(20):
        ids = rows([generator.randint(1, 40) for _ in range(9)])
        for split_cost in (0.0, 10.0, 100.0):
            plan = length_sorted_chunks(ids, 4, split_cost)
            assert cost(ids, plan, split_cost) == pytest.approx(brute_force(ids, 4, split_cost))
    skewed = rows([60, 12, 11, 10, 10, 9, 9, 8])
    equal = length_sorted_chunks(skewed, 4)
    assert cost(skewed, length_sorted_chunks(skewed, 4, 8.0), 8.0) < cost(skewed, equal, 8.0)


def test_empty_input():
    assert length_sorted_chunks([], 4) == []
