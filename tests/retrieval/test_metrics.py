"""Ranking metrics agree with pytrec_eval (trec_eval) on random runs with ties and graded qrels."""

from __future__ import annotations

import random

import pytest
import pytrec_eval

from lmembed.retrieval.metrics import METRICS, evaluate_run, mean_metrics, query_metrics, rank

TREC = {
    "ndcg@10": "ndcg_cut_10",
    "map@100": "map_cut_100",
    "recall@10": "recall_10",
    "recall@100": "recall_100",
    "accuracy@1": "success_1",
}


def _random_case(seed: int) -> tuple[dict, dict]:
    """Qrels graded 0-3 and runs of up to 150 docs whose scores repeat (ties)."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(200)]
    qrels, run = {}, {}
    for q in range(30):
        judged = rng.sample(docs, rng.randint(1, 40))
        qrels[f"q{q}"] = {doc: rng.choice([0, 1, 1, 2, 3]) for doc in judged}
        retrieved = rng.sample(docs, rng.randint(1, 150))
        run[f"q{q}"] = {doc: float(rng.randint(0, 12)) / 4 for doc in retrieved}
    return qrels, run


def _trec_order(scores: dict[str, float]) -> list[str]:
    """trec_eval's ranking, written out: score descending, a tie by document id descending."""
    ranked = sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return [doc for doc, _ in ranked]


def _mrr_at_10(judged: dict[str, int], scores: dict[str, float]) -> float:
    """1 / rank of the first relevant (qrel >= 1) document in the top 10, else 0."""
    for position, doc in enumerate(_trec_order(scores)[:10], start=1):
        if judged.get(doc, 0) >= 1:
            return 1 / position
    return 0.0


def _reference(qrels: dict, run: dict) -> dict[str, dict[str, float]]:
    """pytrec_eval's values; MRR@10 (which trec_eval lacks: its recip_rank has no cut)
    computed here, without lmembed's ranking."""
    measures = {"ndcg_cut.10", "map_cut.100", "recall.10,100", "success.1"}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    return {
        q: {
            **{ours: values[theirs] for ours, theirs in TREC.items()},
            "mrr@10": _mrr_at_10(qrels[q], run.get(q, {})),
        }
        for q, values in full.items()
    }


@pytest.mark.parametrize("seed", range(5))
def test_mrr_reference_agrees_with_trec_eval_recip_rank(seed: int) -> None:
    """The hand-written MRR@10 ranks as trec_eval does: over the whole run it is trec_eval's
    recip_rank wherever the first relevant document is in the top 10, and 0 elsewhere."""
    qrels, run = _random_case(seed)
    recip = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    assert recip
    cut_off = 0
    for query, values in recip.items():
        theirs = values["recip_rank"]
        expected = theirs if theirs >= 1 / 10 else 0.0
        cut_off += 0 < theirs < 1 / 10
        assert _mrr_at_10(qrels[query], run[query]) == pytest.approx(expected, abs=1e-12)
    assert cut_off > 0, "no first relevant document below the top 10: the cut went untested"
    assert _trec_order({"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.5}) == ["c", "b", "a", "d"]
    assert _trec_order({"d9": 1.0, "d10": 1.0}) == ["d9", "d10"]  # ids compare as strings


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_pytrec_eval(seed: int) -> None:
    qrels, run = _random_case(seed)
    ours = evaluate_run(qrels, run)
    reference = _reference(qrels, run)
    scored = {q for q, judged in qrels.items() if any(g >= 1 for g in judged.values())}
    assert set(ours) == scored and scored <= set(reference)
    for query in scored:
        for metric in METRICS:
            assert ours[query][metric] == pytest.approx(reference[query][metric], abs=1e-6), (
                query,
                metric,
            )


def test_ties_follow_trec_eval_descending_ids() -> None:
    assert rank({"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.5}) == ["c", "b", "a", "d"]
    # With the tie broken the other way the relevant "a" would be first.
    metrics = query_metrics(rank({"a": 1.0, "b": 1.0}), {"a": 1})
    assert metrics["accuracy@1"] == 0.0 and metrics["mrr@10"] == 0.5


def test_known_values_and_means() -> None:
    per_query = evaluate_run(
        {"q1": {"d1": 1, "d2": 1}, "q2": {"d9": 2}, "q3": {"d5": 0}},
        {"q1": {"d3": 0.9, "d1": 0.8, "d2": 0.1}, "q2": {"d9": 0.5}},
    )
    assert set(per_query) == {"q1", "q2"}  # q3 has no relevant document
    q1 = per_query["q1"]
    assert q1["mrr@10"] == 0.5 and q1["recall@10"] == 1.0 and q1["accuracy@1"] == 0.0
    assert q1["map@100"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    ideal = 1 + 1 / 1.584962500721156
    assert q1["ndcg@10"] == pytest.approx((1 / 1.584962500721156 + 1 / 2) / ideal)
    means = mean_metrics(per_query)
    assert means["accuracy@1"] == 50.0 and means["recall@100"] == 100.0
    with pytest.raises(ValueError, match="no query has a relevant document"):
        mean_metrics({})
