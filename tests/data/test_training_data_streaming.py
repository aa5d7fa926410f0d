"""Streaming: a generated large file is indexed in bounded memory and gives the batches
of the in-memory path (every row in a list, ``sampler.batch_indices``)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from lmembed.data.sampler import batch_indices
from lmembed.data.training import DataOptions, load_training_data

N = 50_000


def _generate(path: Path) -> list[str]:
    anchors = [f"query number {i} about topic {i % 977}" for i in range(N)]
    with path.open("w", encoding="utf-8") as handle:
        for i, anchor in enumerate(anchors):
            handle.write(
                json.dumps({"anchor": anchor, "positive": f"doc {i}", "negative": f"n {i}"})
            )
            handle.write("\n")
    return anchors


def test_large_jsonl_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    anchors = _generate(path)
    size = path.stat().st_size
    tracemalloc.start()
    data = load_training_data(DataOptions(data=[str(path)]))
    batches = [data.batch(step, 64, seed=5) for step in (0, 1, 390, 781, 782, 2000)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # index 16 B/row + the epoch permutation 8 B/row, far below the file (~4.8 MB)
    assert peak < 40 * N < size / 2, (peak, size)
    for step, batch in zip((0, 1, 390, 781, 782, 2000), batches, strict=True):
        expected = [anchors[i] for i in batch_indices(N, 64, 5, step)]
        assert batch.anchors == expected
        assert [n[0].removeprefix("n ") for n in batch.negatives] == [
            p.removeprefix("doc ") for p in batch.positives
        ]
