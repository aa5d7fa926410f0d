"""Packing (bench/packing.py, a training-step candidate): texts side by side in rows with
a block-diagonal mask give the padded vectors and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import ARCHITECTURES, random_lora_adapter

from bench.packing import pack, pack_rows, use_packing  # noqa: E402
from lmembed.model.embedder import Embedder

# Lengths from 2 to ~12 tokens, so several texts share a row with the longest.
TEXTS = [
    "a man is playing a guitar in the park .",
    "two dogs",
    "the woman is eating food .",
    "a cat",
    "the dog ran",
    "children are playing",
    "a",
]


@given(st.lists(st.integers(1, 40), min_size=1, max_size=60), st.integers(1, 40))
def test_rows_hold_every_text_once_within_capacity(lengths, capacity):
    rows = pack_rows(lengths, capacity)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:
        assert sum(lengths[i] for i in row) <= capacity or len(row) == 1
    # First fit: no later row's first text would have fitted in an earlier row.
    for r, row in enumerate(rows):
        for earlier in rows[:r]:
            assert capacity - sum(lengths[i] for i in earlier) < lengths[row[0]]


def test_packed_batch_layout():
    ids = [[5, 6, 7, 8], [1, 2], [3], [9, 9]]
    packed = pack(ids, pad_id=0)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8], [1, 2, 9, 9], [3, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1], [0, 0, 0, 0]]
    assert packed.segments.tolist() == [[0, 0, 0, 0], [1, 1, 3, 3], [2, -1, -1, -1]]
    seen = packed.bidirectional_mask(torch.float32)[1, 0] == 0
    assert seen.tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [False, False, True, True],
        [False, False, True, True],
    ]
    hidden = torch.arange(12.0).reshape(3, 4, 1)
    assert packed.unpack(hidden)[:, :, 0].tolist() == [[0, 1, 2, 3], [4, 5, 0, 0], [8, 0, 0, 0],
                                                       [6, 7, 0, 0]]  # fmt: skip
    assert packed.token_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_packed_vectors_equal_padded_ones(tiny_models, arch, pooling, attention):
    embedder = Embedder.from_pretrained(
        str(tiny_models[arch]), dtype="fp32", pooling=pooling, attention=attention
    )
    ids = embedder.tokenize(TEXTS)
    assert len(pack_rows([len(r) for r in ids], max(map(len, ids)))) < len(TEXTS) - 2
    padded = embedder.encode(TEXTS, batch_size=len(TEXTS))
    use_packing(embedder)
    packed = embedder.encode(TEXTS, batch_size=len(TEXTS))
    np.testing.assert_allclose(packed, padded, atol=1e-5)


def test_without_restarting_positions_texts_would_see_their_neighbours(tiny_llama, monkeypatch):
    """The check above has teeth: with positions running on along the row, transformers
    sees one sequence per row and the texts attend to the ones before them."""
    embedder = Embedder.from_pretrained(str(tiny_llama), dtype="fp32")
    padded = embedder.encode(TEXTS, batch_size=len(TEXTS))
    use_packing(embedder)

    def running_positions(ids, pad_id):
        packed = pack(ids, pad_id)
        packed.position_ids[:] = torch.arange(packed.position_ids.shape[1])
        return packed

    monkeypatch.setattr("bench.packing.pack", running_positions)
    assert not np.allclose(embedder.encode(TEXTS, batch_size=len(TEXTS)), padded, atol=1e-3)


def test_sliding_window_holds_within_each_packed_text(tiny_models):
    """Tiny Gemma-3's sliding layers see 16 tokens back: two texts longer than that share a
    row (under the longest) and still get their own padded vectors."""
    embedder = Embedder.from_pretrained(str(tiny_models["gemma3"]), dtype="fp32")
    texts = [" ".join(["the dog ran in the park"] * n) for n in (2, 1, 1)]
    ids = embedder.tokenize(texts)
    assert min(map(len, ids)) > embedder.model.config.sliding_window
    assert len(pack_rows([len(r) for r in ids], max(map(len, ids)))) == 2
    padded = embedder.encode(texts)
    use_packing(embedder)
    np.testing.assert_allclose(embedder.encode(texts), padded, atol=1e-5)


def test_packed_gradients_equal_padded_ones(tiny_llama, tmp_path):
    """Training through a packed pass: the same LoRA gradients as padded (dropout off)."""
    adapter = random_lora_adapter(tmp_path / "adapter", tiny_llama)
    embedder = Embedder.from_pretrained(
        str(tiny_llama), adapter=adapter, dtype="fp32", merge=False
    ).train()
    for module in embedder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name, param in embedder.named_parameters():
        param.requires_grad_("lora_" in name)
    grads = []
    for packed in (False, True):
        if packed:
            use_packing(embedder)
        vectors = embedder.embed(TEXTS)
        torch.nn.functional.normalize(vectors, dim=-1).sum(0).norm().backward()
        trainable = [p for p in embedder.parameters() if p.requires_grad]
        grads.append([p.grad.clone() for p in trainable])
        embedder.zero_grad(set_to_none=True)
    assert grads[0]
    for padded, packed in zip(*grads, strict=True):
        torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)
