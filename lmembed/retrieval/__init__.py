"""Retrieval: exact chunked top-k search, trec_eval ranking metrics, hard-negative mining."""

from lmembed.retrieval.metrics import METRICS, evaluate_run, mean_metrics
from lmembed.retrieval.mine import MineOptions, MineSummary, mine
from lmembed.retrieval.search import TopK, search

__all__ = [
    "METRICS",
    "MineOptions",
    "MineSummary",
    "TopK",
    "evaluate_run",
    "mean_metrics",
    "mine",
    "search",
]
