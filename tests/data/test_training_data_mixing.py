"""Several datasets, the (seed, step) purity of batches, sharding and the duplicate rule."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from lmembed.data.sampler import batch_indices, shard_sizes
from lmembed.data.training import DataOptions, TrainingData, load_training_data


def _pairs(path: Path, n: int, tag: str, repeat: int = 0) -> Path:
    """``n`` pairs; with ``repeat`` the anchor text cycles through ``repeat`` values."""
    rows = [
        {"anchor": f"{tag} a{i % repeat if repeat else i}", "positive": f"{tag} p{i}",
         "negative": f"{tag} n{i}"}
        for i in range(n)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load(*paths: Path, **options) -> TrainingData:
    return load_training_data(DataOptions(data=[str(p) for p in paths], **options))


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    return _pairs(tmp_path / "big.jsonl", 40, "big"), _pairs(tmp_path / "small.jsonl", 12, "small")


def test_one_dataset_gives_todays_batches(tmp_path: Path) -> None:
    data = _load(_pairs(tmp_path / "d.jsonl", 50, "d"))
    for step in range(30):  # several epochs, including the short last batch
        expected = [f"d a{i}" for i in batch_indices(50, 8, 42, step)]
        assert data.batch(step, 8, seed=42).anchors == expected


def test_proportional_block_is_one_pass_over_each_dataset(two) -> None:
    data = _load(*two)
    assert data.steps_per_epoch(4) == 10 + 3
    batches = [data.batch(s, 4, seed=7) for s in range(13)]
    assert Counter(b.dataset for b in batches) == {"big": 10, "small": 3}
    for name, n in (("big", 40), ("small", 12)):
        anchors = [a for b in batches if b.dataset == name for a in b.anchors]
        assert sorted(anchors) == sorted(f"{name} a{i}" for i in range(n))
    for b in batches:  # each batch comes from one dataset
        assert {a.split()[0] for a in b.anchors + b.positives + b.flat_negatives()} == {b.dataset}
    order = [b.dataset for b in batches]
    assert order != sorted(order, key=lambda d: d != "big")  # interleaved, not one after the other


def test_smallest_batch(two) -> None:
    data = _load(*two)
    assert data.smallest_batch(4) == 4 and data.smallest_batch(5) == 2  # 12 = 5 + 5 + 2
    sizes = {len(data.batch(s, 5, seed=0)) for s in range(data.steps_per_epoch(5))}
    assert min(sizes) == data.smallest_batch(5)


def test_round_robin_and_weights(two) -> None:
    data = _load(*two, mixing="round-robin")
    assert [data.batch(s, 4, seed=0).dataset for s in range(6)] == ["big", "small"] * 3
    weighted = _load(*two, mixing="weights=big:1,small:3")
    counts = Counter(weighted.batch(s, 4, seed=0).dataset for s in range(26))
    assert counts == {"big": 6, "small": 20}  # 13-step blocks split 3.25/9.75 -> 3/10
    with pytest.raises(ValueError, match="the datasets are big, small"):
        _load(*two, mixing="weights=large:1")


def test_batches_are_a_pure_function_of_seed_and_step(two) -> None:
    """A fresh loader asked for steps in any order (a resumed run) sees the same batches."""
    run = _load(*two)
    straight = [run.batch(s, 4, seed=11) for s in range(40)]
    resumed = _load(*two)
    assert [resumed.batch(s, 4, seed=11) for s in reversed(range(17, 40))] == straight[17:][::-1]
    assert [run.batch(s, 4, seed=12) for s in range(40)] != straight


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_partition_each_batch(two, world_size: int) -> None:
    data = _load(*two)
    for step in range(13):
        batch = data.batch(step, 4, seed=1)
        sizes = shard_sizes(len(batch), world_size)
        parts = [batch.shard(sizes, rank) for rank in range(world_size)]
        assert sum((p.anchors for p in parts), []) == batch.anchors
        assert sum((p.negatives for p in parts), []) == batch.negatives
        assert {p.dataset for p in parts} == {batch.dataset}


def test_duplicates_never_share_a_batch(tmp_path: Path, caplog) -> None:
    path = _pairs(tmp_path / "d.jsonl", 60, "d", repeat=20)  # each anchor 3 times
    data = _load(path)
    with caplog.at_level(logging.INFO, logger="lmembed"):
        data.log_summary(batch_size=8, seed=0)
    row = data.summary(batch_size=8, seed=0)["datasets"][0]
    assert row["deferred_duplicates_epoch0"] > 0 and "deferred_duplicates_epoch0" in caplog.text
    seen = []
    for step in range(data.steps_per_epoch(8)):
        batch = data.batch(step, 8, seed=0)
        assert len(set(batch.anchors)) == len(batch.anchors)
        seen += batch.positives
    assert len(seen) == len(set(seen)) == 60 - row["left_out_epoch0"]
    plain = _load(path, dedupe=False)
    assert any(
        len(set(plain.batch(s, 8, seed=0).anchors)) < 8 for s in range(plain.steps_per_epoch(8))
    )
