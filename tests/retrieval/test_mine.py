"""Hard-negative mining: positives and their copies never come back, the ratio filter and the
rank range remove what they should, runs resume, and the output trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmembed.data import DataError
from lmembed.model.spec import EmbeddingSpec
from lmembed.retrieval.mine import MineOptions, mine


class TableEncoder:
    """Embeds each text as a fixed vector from a table (role-independent), counting calls."""

    def __init__(self, table: dict[str, list[float]], fail_after: int | None = None) -> None:
        self.table = table
        self.spec = EmbeddingSpec(model="table")
        self.calls: list[tuple[str | None, int]] = []
        self.fail_after = fail_after

    def encode(self, texts, batch_size=32, show_progress=None, role=None) -> np.ndarray:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls.append((role, len(texts)))
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def _unit(angle_deg: float) -> list[float]:
    """A 2-D unit vector; cosine with (1, 0) is cos(angle)."""
    a = np.deg2rad(angle_deg)
    return [float(np.cos(a)), float(np.sin(a))]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def test_positives_and_their_copies_never_come_back(tmp_path: Path) -> None:
    # The positive and its copies are the anchor's nearest texts; without the rule they
    # would be the first negatives.
    table = {
        "the anchor": _unit(0),
        "the positive": _unit(1),
        "The  Positive": _unit(1),
        " the positive ": _unit(1.5),
        "THE ANCHOR": _unit(2),
        "other anchor": _unit(90),
        "other positive": _unit(91),
        **{f"doc {i}": _unit(10 + 5 * i) for i in range(10)},
    }
    data = _write(
        tmp_path / "pairs.jsonl",
        [
            {"anchor": "the anchor", "positive": "the positive"},
            {"anchor": "other anchor", "positive": "other positive"},
        ],
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(t for t in table if t != "the anchor") + "\n", encoding="utf-8")
    options = MineOptions(
        data=str(data),
        corpus=str(corpus),
        output=str(tmp_path / "mined.jsonl"),
        negatives=20,
        rank_range="0:50",
        max_score_ratio=None,
    )
    summary = mine(TableEncoder(table), options, progress=False)
    rows = _read(tmp_path / "mined.jsonl")
    assert [r["query"] for r in rows] == ["the anchor", "other anchor"]
    first = rows[0]
    assert first["pos"] == ["the positive"]
    banned = {_key("the positive"), _key("the anchor")}
    assert not banned & {_key(n) for n in first["neg"]}
    assert first["neg"] == [f"doc {i}" for i in range(10)] + ["other anchor", "other positive"]
    assert "other positive" not in rows[1]["neg"] and "other anchor" not in rows[1]["neg"]
    # Anchor 1: its positive, and copies of it and of the anchor (3); anchor 2: its
    # positive, and its own text, which is in the corpus (1).
    assert summary.removed_positive == 2 and summary.removed_duplicate == 4
    assert summary.removed_ratio == 0 and summary.anchors == 2 and summary.documents == 16


def test_ratio_filter_and_rank_range(tmp_path: Path) -> None:
    # cos(anchor, positive) = cos(36.87 deg) = 0.8; candidates at cosines 0.9, 0.77, 0.75, 0.5, 0.2.
    angles = {"c90": 25.84, "c77": 39.65, "c75": 41.41, "c50": 60.0, "c20": 78.46}
    table = {"a": _unit(0), "p": _unit(36.87), **{k: _unit(v) for k, v in angles.items()}}
    data = _write(tmp_path / "pairs.jsonl", [{"query": "a", "pos": ["p"]}])
    corpus = _write(tmp_path / "c.jsonl", [{"text": t} for t in ["p", *angles]])

    def run(**changes) -> tuple[list[str], object]:
        options = MineOptions(
            data=str(data), corpus=str(corpus), output=str(tmp_path / "m.jsonl"), **changes
        )
        summary = mine(TableEncoder(table), options, progress=False)
        return _read(tmp_path / "m.jsonl")[0]["neg"], summary

    negatives, summary = run(negatives=2, rank_range="0:10", max_score_ratio=0.95)
    assert negatives == ["c75", "c50"]  # 0.95 x 0.8 = 0.76 removes 0.9 and 0.77
    assert summary.removed_ratio == 2 and summary.removed_positive == 1
    for off in (None, 0.0):
        negatives, summary = run(negatives=2, rank_range="0:10", max_score_ratio=off)
        assert negatives == ["c90", "c77"] and summary.removed_ratio == 0
    negatives, summary = run(negatives=5, rank_range="1:3", max_score_ratio=None)
    assert negatives == ["c77", "c75"] and summary.skipped_rank == 1
    assert summary.anchors_short == 1  # two found, five wanted
    negatives, _ = run(negatives=2, rank_range="0:10", sampling="random", max_score_ratio=None)
    assert len(negatives) == 2 and set(negatives) <= set(angles)


def test_default_corpus_is_the_positives(tmp_path: Path) -> None:
    table = {f"a{i}": _unit(10 * i) for i in range(6)} | {
        f"p{i}": _unit(10 * i + 2) for i in range(6)
    }
    data = tmp_path / "pairs.csv"
    data.write_text("sent0,sent1\n" + "".join(f"a{i},p{i}\n" for i in range(6)), encoding="utf-8")
    encoder = TableEncoder(table)
    options = MineOptions(
        data=str(data), output=str(tmp_path / "m.jsonl"), negatives=2, rank_range="0:5"
    )
    summary = mine(encoder, options, progress=False)
    rows = _read(tmp_path / "m.jsonl")
    assert summary.documents == 6 and len(rows) == 6
    assert all(set(r["neg"]) <= {f"p{i}" for i in range(6)} - set(r["pos"]) for r in rows)
    # Positives' vectors come from the encoded corpus: documents are encoded once.
    assert sum(n for role, n in encoder.calls if role == "document") == 6


def test_interrupted_run_resumes_to_the_same_output(tmp_path: Path) -> None:
    table = {f"a{i}": _unit(7 * i) for i in range(10)} | {
        f"p{i}": _unit(7 * i + 3) for i in range(10)
    }
    data = _write(
        tmp_path / "pairs.jsonl", [{"anchor": f"a{i}", "positive": f"p{i}"} for i in range(10)]
    )
    common = dict(data=str(data), negatives=3, rank_range="0:6", anchor_block=3, chunk_size=4)
    whole = tmp_path / "whole.jsonl"
    mine(TableEncoder(table), MineOptions(output=str(whole), **common), progress=False)
    output = tmp_path / "resumed.jsonl"
    # Calls: 3 corpus chunks, then each block encodes its anchors; crash in the third block.
    with pytest.raises(KeyboardInterrupt):
        mine(
            TableEncoder(table, fail_after=5),
            MineOptions(output=str(output), **common),
            progress=False,
        )
    assert not output.exists() and (tmp_path / "resumed.jsonl.work" / "part-000001.jsonl").is_file()
    second = TableEncoder(table)
    summary = mine(second, MineOptions(output=str(output), **common), progress=False)
    assert second.calls == [("query", 3), ("query", 1)]  # blocks 2 and 3 only, no corpus
    assert output.read_text() == whole.read_text() and summary.anchors == 10
    assert not (tmp_path / "resumed.jsonl.work").exists()


def test_bad_options_and_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rank_range must be START:END"):
        MineOptions(rank_range="100:10")
    with pytest.raises(ValueError, match="max_score_ratio must be >= 0"):
        MineOptions(max_score_ratio=-0.5)
    with pytest.raises(ValueError, match="negatives must be at least 1"):
        MineOptions(negatives=0)
    bad = tmp_path / "pairs.csv"
    bad.write_text("sent0,other\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: no positive / pos / sent1 column"):
        mine(TableEncoder({}), MineOptions(data=str(bad), output=str(tmp_path / "m.jsonl")))


def test_mined_file_trains(tiny_llama, tmp_path: Path) -> None:
    from lmembed import Embedder
    from lmembed.data.training import DataOptions, load_training_data
    from lmembed.options import build
    from lmembed.training.config import TrainConfig
    from lmembed.training.trainer import train

    subjects = ["a man", "a woman", "the dog", "the cat", "two children", "three people"]
    actions = ["is sitting", "is running", "is eating", "is playing", "is walking"]
    rows = [
        {"anchor": f"{s} {a} in the park .", "positive": f"{s} {a} ."}
        for s in subjects
        for a in actions
    ]
    data = _write(tmp_path / "pairs.jsonl", rows)
    embedder = Embedder.from_pretrained(str(tiny_llama), dtype="fp32")
    mined = tmp_path / "mined.jsonl"
    options = MineOptions(
        data=str(data), output=str(mined), negatives=2, rank_range="2:20", max_score_ratio=None
    )
    summary = mine(embedder, options, progress=False)
    assert summary.anchors == 30 and summary.negatives == 60
    # The shared training-data loader reads the FlagEmbedding layout as written...
    dataset = load_training_data(DataOptions(data=[str(mined)])).datasets[0]
    examples = dataset.examples(range(len(dataset)))
    assert [(e.anchor, e.positive, list(e.negatives)) for e in examples] == [
        (r["query"], r["pos"][0], r["neg"]) for r in _read(mined)
    ]
    # ...and `lmembed train --data mined.jsonl` trains on it.
    flat = {"model": str(tiny_llama), "dtype": "fp32", "data": [str(mined)], "steps": 2}
    flat |= {"output": str(tmp_path / "run"), "batch_size": 4, "warmup": 0, "save_every": 0}
    result = train(build(TrainConfig, flat))
    assert Path(result.output, "adapter_config.json").is_file()
