"""The server's encode function: one micro-batch of texts, tokenized once, run in passes.

The worker hands ``embedder_encode_fn`` every text of one role in a micro-batch. They
are tokenized once (the counts in ``usage`` and the model's input are the same ids),
sorted by length and cut into forward passes: ``Embedder.chunks`` (at most
``encode_batch_size`` texts a pass, as ``Embedder.encode`` cuts them) or, with
``max_batch_tokens``, ``token_budget_chunks`` (a pass's padded tokens within the
budget). A pass's rows do not depend on which texts share it (padding is masked), so
both plans give ``Embedder.encode``'s vectors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lmembed.model.embedder import Embedder
from lmembed.model.spec import Role
from lmembed.quantization import unit_rows
from lmembed.serving.batcher import EncodeFn
from lmembed.serving.config import ServerConfig

PassObserver = Callable[[int, int], None]  # (texts, padded tokens) of one forward pass


def token_budget_chunks(ids: list[list[int]], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Positions of ``ids``, longest first, cut into passes of at most ``max_rows`` texts
    whose padded size (the pass's longest text x its texts) is at most ``max_tokens``.

    Longest first, a pass's first text sets its padded length, so each pass is filled
    greedily; a text longer than the budget forms a pass of its own.
    """
    chunks: list[list[int]] = []
    for position in sorted(range(len(ids)), key=lambda i: -len(ids[i])):
        chunk = chunks[-1] if chunks else []
        longest = len(ids[chunk[0]]) if chunk else 0
        if chunk and len(chunk) < max_rows and longest * (len(chunk) + 1) <= max_tokens:
            chunk.append(position)
        else:
            chunks.append([position])
    return chunks


def embedder_encode_fn(
    embedder: Embedder, config: ServerConfig, on_pass: PassObserver | None = None
) -> EncodeFn:
    """``(texts, role) -> (vectors, token counts)``; counts are the tokens the model sees
    (prompt, truncation and EOS included); vectors unit length if ``config.normalize``.
    ``on_pass`` sees every forward pass (the batch metrics)."""

    def plan(ids: list[list[int]]) -> list[list[int]]:
        if config.max_batch_tokens is None:
            return embedder.chunks(ids, config.encode_batch_size)
        return token_budget_chunks(ids, config.max_batch_tokens, config.encode_batch_size)

    def encode(texts: list[str], role: Role | None) -> tuple[np.ndarray, list[int]]:
        ids = embedder.tokenize(texts, role)
        vectors = _run_passes(embedder, ids, plan(ids), on_pass)
        return (unit_rows(vectors) if config.normalize else vectors), [len(r) for r in ids]

    return encode


@torch.inference_mode()
def _run_passes(
    embedder: Embedder, ids: list[list[int]], chunks: list[list[int]], on_pass: PassObserver | None
) -> np.ndarray:
    """Rows of ``ids`` in input order, one ``embed_chunk`` call per chunk of positions."""
    parts = []
    for chunk in chunks:
        rows = [ids[i] for i in chunk]
        parts.append(embedder.embed_chunk(rows).float().cpu().numpy())
        if on_pass is not None:
            on_pass(len(rows), len(rows) * max(len(row) for row in rows))
    vectors = np.empty((len(ids), parts[0].shape[1]), dtype=np.float32)
    vectors[[i for chunk in chunks for i in chunk]] = np.concatenate(parts)
    return vectors
