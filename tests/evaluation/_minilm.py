"""all-MiniLM-L6-v2 (sentence-transformers) behind lmembed's Encoder protocol.

A plain module, not a conftest, so it cannot shadow the top-level ``conftest``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from tiny_models import require_packaged_model

from lmembed.model.embedder import EmbeddingSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class STEncoder:
    """A SentenceTransformer behind lmembed's Encoder protocol."""

    def __init__(self, model: Any, spec: EmbeddingSpec) -> None:
        self.model = model
        self.spec = spec

    def encode(self, texts: list[str], batch_size: int = 32, show_progress: bool = True):
        return self.model.encode(
            texts, batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True
        ).astype(np.float32)


@functools.cache
def _load() -> STEncoder:
    folder = require_packaged_model("all-minilm-l6-v2")
    from sentence_transformers import SentenceTransformer

    spec = EmbeddingSpec(str(folder), pooling="mean", max_length=256, dtype="fp32")
    return STEncoder(SentenceTransformer(str(folder), device="cpu"), spec)


@contextmanager
def minilm() -> Iterator[STEncoder]:
    """The model (loaded once, offline) with torch on one thread while in use: on a busy
    2-core machine two threads run about 8x slower."""
    encoder = _load()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield encoder
    finally:
        torch.set_num_threads(threads)
