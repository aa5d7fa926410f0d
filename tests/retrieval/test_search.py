"""Chunked top-k search equals a full sort of the whole score matrix, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from lmembed.retrieval.search import TopK, normalize, search


def _brute_force(queries: np.ndarray, corpus: np.ndarray, k: int):
    scores = normalize(queries) @ normalize(corpus).T
    order = np.lexsort((np.broadcast_to(np.arange(len(corpus)), scores.shape), -scores), axis=1)
    order = order[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000])
def test_chunked_search_equals_brute_force(chunk: int) -> None:
    rng = np.random.default_rng(0)
    # Unit vectors with entries +-0.5: 16 distinct rows, so many scores tie, and every
    # dot product is exact in float32 whatever the BLAS path.
    corpus = rng.choice([-0.5, 0.5], size=(300, 4)).astype(np.float32)
    queries = rng.choice([-0.5, 0.5], size=(20, 4)).astype(np.float32)
    chunks = [corpus[i : i + chunk] for i in range(0, len(corpus), chunk)]
    scores, indices = search(queries, chunks, k=25, query_block=7)
    want_scores, want_indices = _brute_force(queries, corpus, 25)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def test_small_corpus_and_validation() -> None:
    scores, indices = search(np.eye(3), [np.eye(3)[:2]], k=10)
    assert scores.shape == (3, 2) and indices[0].tolist() == [0, 1]
    assert scores[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        TopK(np.eye(2), 0)
    with pytest.raises(ValueError, match="NaN"):
        search(np.eye(2), [np.full((1, 2), np.nan)], k=1)
