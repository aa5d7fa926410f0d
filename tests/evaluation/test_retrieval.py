"""Retrieval evaluation end to end on a tiny model: equal to a brute-force pytrec_eval run,
independent of chunking, cached corpora, prompts per role, JSON and markdown."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

sys.path.insert(0, str(Path(__file__).parents[1] / "retrieval"))
from retrieval_toy import require_shared, write_beir  # noqa: E402

from lmembed import Embedder  # noqa: E402
from lmembed.data.retrieval import load_retrieval  # noqa: E402
from lmembed.evaluation.retrieval import (  # noqa: E402
    RetrievalResult,
    evaluate_retrieval,
    score_retrieval_task,
)
from lmembed.retrieval.metrics import METRICS  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def embedder(tiny_llama) -> Embedder:
    return Embedder.from_pretrained(
        str(tiny_llama), dtype="fp32", query_prompt="query: {s}", document_prompt="{s} is: "
    )


class Recording:
    """An encoder that records (role, number of texts) of every call."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.calls: list[tuple[str | None, int]] = []

    def encode(self, texts, batch_size=32, show_progress=None, role=None):
        self.calls.append((role, len(texts)))
        return self.inner.encode(texts, batch_size=batch_size, show_progress=False, role=role)


def _pytrec_reference(embedder: Embedder, folder: Path) -> dict[str, float]:
    """Full score matrix, every document in the run, pytrec_eval's measures (x100)."""
    task = load_retrieval(folder)
    q = embedder.encode(task.queries, role="query").astype(np.float64)
    d = embedder.encode(task.documents, role="document").astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    scores = q @ d.T
    run = {
        qid: {did: float(s) for did, s in zip(task.doc_ids, row, strict=True)}
        for qid, row in zip(task.query_ids, scores, strict=True)
    }
    measures = {"ndcg_cut.10", "map_cut.100", "recall.10,100", "success.1"}
    values = pytrec_eval.RelevanceEvaluator(task.qrels, measures).evaluate(run)
    top10 = {qid: dict(sorted(r.items(), key=lambda kv: -kv[1])[:10]) for qid, r in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(task.qrels, {"recip_rank"}).evaluate(top10)
    names = {
        "ndcg@10": "ndcg_cut_10",
        "map@100": "map_cut_100",
        "recall@10": "recall_10",
        "recall@100": "recall_100",
        "accuracy@1": "success_1",
    }
    out = {m: 100 * np.mean([v[t] for v in values.values()]) for m, t in names.items()}
    out["mrr@10"] = 100 * np.mean([v["recip_rank"] for v in rr.values()])
    return out


def test_equals_brute_force_pytrec_eval(embedder, tmp_path, cache) -> None:
    folder = write_beir(tmp_path / "toy")
    result = evaluate_retrieval(embedder, [folder], progress=False)
    reference = _pytrec_reference(embedder, folder)
    assert set(result.tasks) == {"toy"}
    for metric in METRICS:
        assert result.tasks["toy"].metrics[metric] == pytest.approx(reference[metric], abs=1e-6)
    assert (result.tasks["toy"].queries, result.tasks["toy"].documents) == (8, 24)


def test_chunking_does_not_change_scores(embedder, tmp_path) -> None:
    task = load_retrieval(write_beir(tmp_path / "toy"))
    whole = score_retrieval_task(embedder, task, cache=False, progress=False)
    chunked = score_retrieval_task(embedder, task, cache=False, chunk_size=5, progress=False)
    for metric in METRICS:
        assert chunked.metrics[metric] == pytest.approx(whole.metrics[metric], abs=1e-9)


def test_roles_and_corpus_cache(embedder, tmp_path, cache) -> None:
    folder = write_beir(tmp_path / "toy")
    first = Recording(embedder)
    result = evaluate_retrieval(first, folder, progress=False)
    assert first.calls == [("query", 8), ("document", 24)]
    assert len(list((cache / "corpus").glob("*/chunk-*.npy"))) == 1
    second = Recording(embedder)
    again = evaluate_retrieval(second, folder, progress=False)
    assert second.calls == [("query", 8)]  # the corpus came from the cache
    assert again.tasks["toy"].metrics == result.tasks["toy"].metrics
    # Another spec (prompt) or another corpus is a cache miss.
    other = Recording(Embedder.from_pretrained(embedder.spec.model, dtype="fp32"))
    evaluate_retrieval(other, folder, progress=False)
    assert other.calls[-1] == ("document", 24)
    (folder / "corpus.jsonl").write_text('{"_id": "d0", "text": "x"}\n', encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text("q0\td0\t1\n", encoding="utf-8")
    third = Recording(embedder)
    evaluate_retrieval(third, folder, progress=False, cache=False)
    assert third.calls == [("query", 1), ("document", 1)]


def test_prompts_per_role_change_the_result(embedder, tmp_path, cache) -> None:
    folder = write_beir(tmp_path / "toy")
    symmetric = Embedder.from_pretrained(embedder.spec.model, dtype="fp32")
    a = evaluate_retrieval(embedder, folder, progress=False, cache=False).tasks["toy"]
    b = evaluate_retrieval(symmetric, folder, progress=False, cache=False).tasks["toy"]
    assert a.metrics != b.metrics


def test_json_round_trip_markdown_and_compare(embedder, tmp_path, cache) -> None:
    folder = write_beir(tmp_path / "toy")
    result = evaluate_retrieval(
        embedder, [folder, write_beir(tmp_path / "b" / "toy")], progress=False
    )
    assert list(result.tasks) == ["toy", str(tmp_path / "b" / "toy")]  # same folder name
    data = result.to_dict()
    assert data["model"] == embedder.spec.model and data["query_prompt"] == "query: {s}"
    assert set(data["tasks"]["toy"]) == {*METRICS, "queries", "documents"}
    assert set(data["average"]) == set(METRICS)
    path = result.save(tmp_path / "r.json")
    loaded = RetrievalResult.load(path)
    assert loaded.to_dict() == json.loads(path.read_text()) == data
    table = result.to_markdown()
    assert "| task | NDCG@10 | MRR@10 | MAP@100 | R@10 | R@100 | Acc@1 |" in table
    ndcg = result.tasks["toy"].metrics["ndcg@10"]
    assert f"| toy | {ndcg:.2f} |" in table
    tuned = RetrievalResult.from_dict(
        {**data, "tasks": {"toy": {**data["tasks"]["toy"], "ndcg@10": 99.0}}}
    )
    diff = tuned.compare(result, metrics=["ndcg@10"])
    assert f"| toy | NDCG@10 | {ndcg:.2f} | 99.00 | {99.0 - ndcg:+.2f} |" in diff
    with pytest.raises(ValueError, match="not an lmembed retrieval result"):
        RetrievalResult.from_dict({"tasks": {}})


MINILM_REFERENCE = {"ndcg@10": 90.29, "mrr@10": 87.90, "recall@10": 98.84, "accuracy@1": 81.55}


@pytest.mark.integration
def test_minilm_reproduces_sentence_transformers_evaluator(cache) -> None:
    """sentence-transformers' InformationRetrievalEvaluator figures (shared data README)."""
    require_shared("retrieval/stsb-paraphrase")
    from tiny_models import SHARED_DATA

    embedder = Embedder.from_pretrained("all-minilm-l6-v2", dtype="fp32")
    result = evaluate_retrieval(embedder, "stsb-paraphrase", SHARED_DATA, batch_size=64)
    scores = result.tasks["stsb-paraphrase"]
    assert (scores.queries, scores.documents) == (309, 10269)
    for metric, value in MINILM_REFERENCE.items():
        assert scores.metrics[metric] == pytest.approx(value, abs=0.01), metric
