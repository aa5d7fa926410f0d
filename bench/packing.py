"""Packing (a training-step candidate of ``bench_step_options.py``, issue 17): several
short texts side by side in one row, each attending only to itself.

A padded batch computes every row up to its longest text. A packed batch puts texts next
to each other in rows no longer than that longest text (first-fit decreasing), with
positions that restart at every text and attention kept within each text, so each text's
hidden states are those of its own pass (to float rounding) and almost no compute goes
to pads. Rows never grow past the longest text, so attention never costs more than it
did padded.

Causal models get the mask from transformers, which reads the packing from the restarting
positions (and keeps sliding windows, e.g. Gemma-3's, per text); bidirectional attention
gets ``PackedBatch.bidirectional_mask``. It lost in the paired benchmark (docs/benchmarks.md,
"Training-step candidates"), so it lives here, not in ``lmembed``: ``use_packing`` switches
an ``Embedder`` to it, and tests/test_bench_packing.py checks it gives the padded vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmembed.model.embedder import Embedder, additive_mask, length_sorted_chunks
from lmembed.model.pooling import pool


@dataclass(frozen=True)
class PackedBatch:
    """Rows of packed texts, and where each text's tokens lie in them."""

    input_ids: torch.Tensor  # (rows, length)
    position_ids: torch.Tensor  # (rows, length): 0, 1, ... within each text; 0 on pads
    segments: torch.Tensor  # (rows, length): the text at each position, -1 on pads
    token_index: torch.Tensor  # (texts, longest): flat row position of each text's tokens
    token_mask: torch.Tensor  # (texts, longest): 1 on a text's tokens, 0 after its end

    def bidirectional_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """The additive 4D mask (rows, 1, query, key) in which a position sees every token of
        its own text and nothing else; pads see pads, so no row is all masked."""
        return additive_mask(
            (self.segments[:, :, None] == self.segments[:, None, :])[:, None], dtype
        )

    def unpack(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-text hidden states (texts, longest, dim), right-padded as ``token_mask`` says."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        return flat[self.token_index.to(hidden.device)]


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Positions of ``lengths`` in rows of at most ``capacity`` tokens, first-fit decreasing
    (a text longer than ``capacity`` gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def pack(ids: list[list[int]], pad_id: int) -> PackedBatch:
    """Pack tokenized texts into rows as long as the longest of them."""
    longest = max(len(row) for row in ids)
    rows = pack_rows([len(row) for row in ids], longest)
    width = max(sum(len(ids[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    token_index = torch.zeros((len(ids), longest), dtype=torch.long)
    token_mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(ids[i])
            span = slice(start, start + n)
            input_ids[r, span] = torch.tensor(ids[i])
            position_ids[r, span] = torch.arange(n)
            segments[r, span] = i
            token_index[i, :n] = r * width + torch.arange(start, start + n)
            token_mask[i, :n] = 1
            start += n
    return PackedBatch(input_ids, position_ids, segments, token_index, token_mask)


def packed_forward(embedder: Embedder, packed: PackedBatch) -> torch.Tensor:
    """Pooled embeddings for a packed batch, in the order of the texts packed."""
    mask = None  # causal: transformers builds it from the restarting positions
    if embedder.spec.attention == "bidirectional":
        mask = packed.bidirectional_mask(embedder.model.dtype).to(embedder.device)
    hidden = embedder.model(
        input_ids=packed.input_ids.to(embedder.device),
        position_ids=packed.position_ids.to(embedder.device),
        attention_mask=mask,
        use_cache=False,  # transformers detects packed rows only without a cache
    ).last_hidden_state
    token_mask = packed.token_mask.to(embedder.device)
    return pool(packed.unpack(hidden), token_mask, embedder.spec.pooling)


def use_packing(embedder: Embedder) -> None:
    """Make ``embedder`` run every pass (encoding, training, GradCache) packed; its passes
    keep the fewest chunks, since packed rows hardly pad."""
    embedder.embed_chunk = lambda ids: packed_forward(
        embedder, pack(ids, embedder.tokenizer.pad_token_id)
    )
    embedder.chunks = lambda ids, size: length_sorted_chunks(ids, size, None)
