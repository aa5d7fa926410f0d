from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from lmembed.data.sts import STSTask
from lmembed.evaluation import STSResult, evaluate, score_task
from lmembed.model.embedder import EmbeddingSpec


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep score caches out of the user's ~/.cache."""
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path / "cache"))


SENTENCES = ["a cat", "a dog", "the sun", "a kitten", "the moon", "rain"]


class HashEncoder:
    """Deterministic random vectors per text; counts what it was asked to encode."""

    def __init__(self, spec: EmbeddingSpec | None = None, dim: int = 8) -> None:
        self.spec = spec or EmbeddingSpec("hash", pooling="mean", dtype="fp32")
        self.dim = dim
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") + len(text)
        return np.random.default_rng(seed).normal(size=self.dim).astype(np.float32) * 3

    def encode(self, texts: list[str], batch_size: int = 32, show_progress: bool = True):
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts])


def _task() -> STSTask:
    """15 distinct pairs (no tied cosines) over 6 sentences, each used several times."""
    s1, s2 = map(list, zip(*itertools.combinations(SENTENCES, 2), strict=True))
    scores = np.random.default_rng(0).uniform(0, 5, len(s1))
    return STSTask("stsb", s1, s2, scores, Path("x.tsv"))


def test_score_task_matches_scipy_and_encodes_each_sentence_once() -> None:
    encoder, task = HashEncoder(), _task()
    score = score_task(encoder, task)
    assert len(encoder.calls) == 1 and sorted(encoder.calls[0]) == sorted(set(SENTENCES))
    a = np.stack([encoder.vector(s) for s in task.sentences1]).astype(np.float64)
    b = np.stack([encoder.vector(s) for s in task.sentences2]).astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert score.pairs == 15
    assert score.spearman == pytest.approx(spearmanr(task.scores, cos).statistic * 100)
    assert score.pearson == pytest.approx(pearsonr(task.scores, cos).statistic * 100)


def _average_ranks(values: list[float]) -> list[float]:
    """1-based ranks; a run of tied values shares the mean of the positions it spans."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start  # the tie run is order[start : end + 1]
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: list[float], y: list[float]) -> float:
    x, y = np.asarray(x) - np.mean(x), np.asarray(y) - np.mean(y)
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def _spearman_with_ties(x: list[float], y: list[float]) -> float:
    """Spearman's rho the textbook way: Pearson of average ranks (no scipy)."""
    return _pearson(_average_ranks(x), _average_ranks(y))


def test_average_ranks_reference() -> None:
    assert _average_ranks([3.0, 1.0, 3.0, 2.0, 3.0, 0.5]) == [5.0, 2.0, 5.0, 3.0, 5.0, 1.0]
    assert _average_ranks([2.0, 2.0]) == [1.5, 1.5]


def test_score_task_spearman_averages_the_ranks_of_ties() -> None:
    """STS gold scores are mostly ties (whole or half points); repeated pairs tie the
    cosines too. Spearman must rank ties by their average position."""
    encoder = HashEncoder()
    pairs = list(itertools.combinations(SENTENCES, 2)) * 4  # 15 cosines, each 4 times
    s1, s2 = map(list, zip(*pairs, strict=True))
    a = np.stack([encoder.vector(s) for s in s1]).astype(np.float64)
    b = np.stack([encoder.vector(s) for s in s2]).astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    # Gold on a 0-5 scale in whole points, loosely following the cosines: 60 pairs, <= 6
    # distinct scores.
    noise = np.random.default_rng(0).normal(0, 0.8, len(pairs))
    gold = np.clip(np.round((cos + 1) * 2.5 + noise), 0, 5)
    assert len(set(gold.tolist())) <= 6 and len(set(cos.tolist())) == 15

    score = score_task(encoder, STSTask("ties", s1, s2, gold, Path("ties.tsv")))
    expected = _spearman_with_ties(gold.tolist(), cos.tolist())
    assert score.pairs == len(pairs)
    assert score.spearman == pytest.approx(100 * expected, abs=1e-9)
    # The ties matter: ranking them in order of appearance gives another rho.
    ordinal = _pearson(
        np.argsort(np.argsort(gold, kind="stable")), np.argsort(np.argsort(cos, kind="stable"))
    )
    assert abs(100 * ordinal - score.spearman) > 1.0


def test_score_task_rejects_bad_embeddings() -> None:
    class Broken(HashEncoder):
        def __init__(self, result: np.ndarray) -> None:
            super().__init__()
            self.result = result

        def encode(self, texts, batch_size=32, show_progress=True):
            return self.result

    with pytest.raises(ValueError, match="shape"):
        score_task(Broken(np.zeros((2, 4))), _task())
    with pytest.raises(ValueError, match="NaN"):
        score_task(Broken(np.full((6, 4), np.nan)), _task())


def _data_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    for filename in ("sts/stsb_test.tsv", "sts/biosses.tsv"):
        lines = ["sentence1\tsentence2\tscore"] + [
            f"{SENTENCES[i % 6]}\t{SENTENCES[(i * 5 + 1) % 6]}\t{rng.uniform(0, 5):.2f}"
            for i in range(20)
        ]
        path = tmp_path / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return tmp_path


def test_evaluate_result_shape(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.ERROR):  # row counts differ from the canonical ones
        scored = evaluate(HashEncoder(), "stsb,biosses", _data_dir(tmp_path), progress=False)
    result = scored.to_dict()
    assert list(result) == [
        "model", "adapter", "prompt", "pooling", "max_length", "dtype",
        "tasks", "average", "lmembed_version", "elapsed_s",
    ]  # fmt: skip
    assert list(result["tasks"]) == ["stsb", "biosses"]
    assert set(result["tasks"]["stsb"]) == {"spearman", "pearson", "pairs"}
    assert result["tasks"]["stsb"]["pairs"] == 20
    mean = np.mean([t["spearman"] for t in result["tasks"].values()])
    assert result["average"]["spearman"] == pytest.approx(mean)
    assert json.loads(json.dumps(result)) == result

    path = STSResult.from_dict(result).save(tmp_path / "out" / "result.json")
    assert STSResult.load(path).to_dict() == result
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not an lmembed STS result"):
        STSResult.load(tmp_path / "bad.json")


def test_base_model_scores_are_cached(tmp_path: Path) -> None:
    data_dir = _data_dir(tmp_path)
    first = HashEncoder()
    result = evaluate(first, "stsb,biosses", data_dir, progress=False).to_dict()
    again = HashEncoder()
    again_result = evaluate(again, "biosses,stsb", data_dir, progress=False).to_dict()
    assert again_result["tasks"] == result["tasks"]
    assert again.calls == []

    (data_dir / "sts/biosses.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\t2\n")
    changed = HashEncoder()
    evaluate(changed, "stsb,biosses", data_dir, progress=False)
    assert len(changed.calls) == 1  # only the task whose file changed is re-scored

    other = HashEncoder(EmbeddingSpec("hash", pooling="mean", dtype="fp32", prompt="query: {s}"))
    evaluate(other, "stsb", data_dir, progress=False)
    assert len(other.calls) == 1


def test_adapters_are_not_cached_unless_asked(tmp_path: Path) -> None:
    data_dir = _data_dir(tmp_path)
    spec = EmbeddingSpec("hash", pooling="mean", dtype="fp32", adapter=str(tmp_path / "adapter"))
    for _ in range(2):
        encoder = HashEncoder(spec)
        evaluate(encoder, "stsb", data_dir, progress=False)
        assert len(encoder.calls) == 1
    evaluate(HashEncoder(spec), "stsb", data_dir, progress=False, cache=True)
    cached = HashEncoder(spec)
    evaluate(cached, "stsb", data_dir, progress=False, cache=True)
    assert cached.calls == []


def _result(model: str, scores: dict[str, float], adapter: str | None = None) -> STSResult:
    return STSResult.from_dict({
        "model": model, "adapter": adapter, "prompt": None, "pooling": "mean",
        "tasks": {n: {"spearman": s, "pearson": s - 1, "pairs": 10} for n, s in scores.items()},
        "average": {"spearman": float(np.mean(list(scores.values()))), "pearson": 0.0},
    })  # fmt: skip


def test_compare_and_markdown() -> None:
    base = _result("Qwen/Qwen2-0.5B", {"stsb": 50.0, "biosses": 60.0, "sts12": 40.0})
    tuned = _result("Qwen/Qwen2-0.5B", {"stsb": 80.5, "biosses": 70.25}, adapter="runs/a")
    table = tuned.compare(base)
    assert "| stsb | 50.00 | 80.50 | +30.50 |" in table
    assert "| sts12 | 40.00 | – | – |" in table
    assert "| **average** (2 tasks) | 55.00 | 75.38 | +20.38 |" in table
    assert "adapter runs/a" in table
    text = tuned.to_markdown()
    assert "| stsb | 80.50 | 79.50 | 10 |" in text and "**average**" in text
