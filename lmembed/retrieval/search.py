"""Exact top-k search by cosine with memory bounded by one corpus chunk, not the corpus.

The corpus arrives in chunks (encoded, or read from a cache); each chunk is scored
against every query with one matrix product and merged into a running top-k, so
memory is ``queries x (k + chunk)`` scores whatever the corpus size. Ties are
broken by corpus position (earlier first), so results do not depend on the chunking.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lmembed.quantization import unit_rows


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows (zero rows stay zero), for cosine as a dot product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return unit_rows(vectors)


class TopK:
    """The running ``k`` best (score, corpus index) per query over chunks seen so far."""

    def __init__(self, queries: np.ndarray, k: int, query_block: int = 1024) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.queries = normalize(queries)
        self.k = k
        self.query_block = query_block
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        self.indices = np.zeros((len(queries), 0), dtype=np.int64)
        self.seen = 0

    def add(self, chunk: np.ndarray) -> None:
        """Score the next corpus chunk (rows ``seen .. seen + len(chunk)``) and merge it.

        Queries go ``query_block`` at a time, so the score matrix in memory is at most
        ``query_block x len(chunk)``.
        """
        chunk = normalize(chunk)
        positions = np.arange(self.seen, self.seen + len(chunk))
        self.seen += len(chunk)
        merged = [
            self._merge(rows, chunk, positions)
            for rows in _blocks(len(self.queries), self.query_block)
        ]
        if merged:
            self.scores = np.concatenate([m[0] for m in merged])
            self.indices = np.concatenate([m[1] for m in merged])

    def _merge(self, rows: slice, chunk: np.ndarray, positions: np.ndarray):
        scores = self.queries[rows] @ chunk.T
        indices = np.broadcast_to(positions, scores.shape)
        return _best(
            np.concatenate([self.scores[rows], scores], axis=1),
            np.concatenate([self.indices[rows], indices], axis=1),
            self.k,
        )


def search(
    queries: np.ndarray, chunks: Iterable[np.ndarray], k: int, query_block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-``k`` of each query over the concatenated ``chunks``: (scores, indices),
    best first; fewer than ``k`` columns when the corpus is smaller."""
    top = TopK(queries, k, query_block)
    for chunk in chunks:
        top.add(chunk)
    return top.scores, top.indices


def _blocks(total: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def _best(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` highest scores, ties by lower index, sorted best first.

    Columns are in index order (the running top-k holds lower indices than any new
    chunk), so among scores tied with the k-th, the leftmost win.
    """
    if scores.shape[1] > k:
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        above = scores > kth
        tied = scores == kth
        room = k - above.sum(axis=1, keepdims=True)
        keep = above | (tied & (np.cumsum(tied, axis=1) <= room))
        scores = scores[keep].reshape(len(scores), k)
        indices = indices[keep].reshape(len(indices), k)
    order = np.lexsort((indices, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1)
