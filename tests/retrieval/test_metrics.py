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


def _reference(qrels: dict, run: dict) -> dict[str, dict[str, float]]:
    """pytrec_eval's values, MRR@10 as recip_rank over the run cut at trec_eval's top 10."""
    measures = {"ndcg_cut.10", "map_cut.100", "recall.10,100", "success.1", "recip_rank"}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top10 = {q: {d: run[q][d] for d in rank(run[q])[:10]} for q in run}
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {
        q: {
            **{ours: values[theirs] for ours, theirs in TREC.items()},
            "mrr@10": cut[q]["recip_rank"],
        }
        for q, values in full.items()
    }


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
