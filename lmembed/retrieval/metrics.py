"""Ranking metrics (NDCG@10, MRR@10, MAP@100, Recall@10/100, Accuracy@1), trec_eval's way.

Definitions follow trec_eval (the reference behind pytrec_eval, BEIR and MTEB), so the
numbers can be checked against it to 1e-6:

* a run is ranked by score, ties broken by **descending** document id (trec_eval's rule);
* a document is relevant when its qrel is >= 1; NDCG uses the graded qrel as the gain
  (linear gain, ``log2(rank + 1)`` discount, ideal = the best ordering of the qrels);
* MAP@k divides by the number of relevant documents (trec_eval's ``map_cut``);
  sentence-transformers divides by ``min(k, relevant)``, equal whenever a query has at
  most k relevant documents;
* MRR@k is the reciprocal rank of the first relevant document within the top k.

Only queries with at least one relevant document are scored (as BEIR, MTEB and
sentence-transformers do); means are x100.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

METRICS = ("ndcg@10", "mrr@10", "map@100", "recall@10", "recall@100", "accuracy@1")
Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def rank(scores: Mapping[str, float]) -> list[str]:
    """Document ids best first: score descending, ties by descending id (as trec_eval)."""
    by_id = sorted(scores, reverse=True)
    return sorted(by_id, key=lambda doc: -scores[doc])


def query_metrics(ranking: list[str], qrels: Mapping[str, int]) -> dict[str, float]:
    """The six metrics (0-1) of one ranked list against one query's graded qrels."""
    relevant = {doc for doc, grade in qrels.items() if grade >= 1}
    hits = [doc in relevant for doc in ranking]
    return {
        "ndcg@10": _ndcg(ranking, qrels, 10),
        "mrr@10": next((1.0 / (i + 1) for i, hit in enumerate(hits[:10]) if hit), 0.0),
        "map@100": _average_precision(hits[:100], len(relevant)),
        "recall@10": sum(hits[:10]) / len(relevant),
        "recall@100": sum(hits[:100]) / len(relevant),
        "accuracy@1": float(any(hits[:1])),
    }


def evaluate_run(qrels: Qrels, run: Run) -> dict[str, dict[str, float]]:
    """Per-query metrics (0-1) for every query with a relevant document.

    A judged query missing from ``run`` scores 0 (it retrieved nothing).
    """
    return {
        query: query_metrics(rank(run.get(query, {})), judged)
        for query, judged in qrels.items()
        if any(grade >= 1 for grade in judged.values())
    }


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each metric's mean over queries, x100."""
    if not per_query:
        raise ValueError("no query has a relevant document; nothing to score")
    return {
        metric: 100 * math.fsum(m[metric] for m in per_query.values()) / len(per_query)
        for metric in METRICS
    }


def _ndcg(ranking: list[str], qrels: Mapping[str, int], k: int) -> float:
    gains = [max(qrels.get(doc, 0), 0) for doc in ranking[:k]]
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    best = _dcg(ideal)
    return _dcg(gains) / best if best > 0 else 0.0


def _dcg(gains: list[int]) -> float:
    return math.fsum(gain / math.log2(i + 2) for i, gain in enumerate(gains))


def _average_precision(hits: list[bool], relevant: int) -> float:
    found, total = 0, 0.0
    for i, hit in enumerate(hits):
        if hit:
            found += 1
            total += found / (i + 1)
    return total / relevant
