"""Corpus embeddings encoded chunk by chunk, optionally kept on disk.

Each chunk of ``chunk_size`` texts is encoded (role ``document``), written as one
``.npy`` file, and yielded; a later pass (or a rerun after a crash) reads the files it
finds instead of encoding again. Memory holds one chunk. The folder name is a hash of
everything that decides the vectors: the embedding spec, the model/adapter files
(sizes and mtimes), the texts and the chunk size.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from lmembed.io import atomic_write_npy, cache_root, folder_fingerprint

logger = logging.getLogger(__name__)

# Bump when the stored format or the document text composition changes.
STORE_VERSION = 1
DEFAULT_CHUNK = 16384


class RoleEncoder(Protocol):
    """An encoder with prompts per role (``lmembed.Embedder``)."""

    spec: Any

    def encode(
        self, texts: list[str], batch_size: int = 32, show_progress: bool | None = None, role=None
    ) -> np.ndarray: ...


def corpus_key(encoder: RoleEncoder, texts: Sequence[str], chunk_size: int) -> str:
    """Hash of the spec, the model/adapter files, the texts and the chunking."""
    spec = encoder.spec.to_dict()
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    payload = {
        "version": STORE_VERSION,
        "spec": spec,
        "model_files": folder_fingerprint(spec.get("model")),
        "adapter_files": folder_fingerprint(spec.get("adapter")),
        "texts": digest.hexdigest(),
        "chunk_size": chunk_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def default_folder(encoder: RoleEncoder, texts: Sequence[str], chunk_size: int) -> Path:
    """Where the cache keeps this corpus: ``cache_root()/corpus/<key>``."""
    return cache_root() / "corpus" / corpus_key(encoder, texts, chunk_size)[:32]


def encoded_chunks(
    encoder: RoleEncoder,
    texts: Sequence[str],
    folder: Path | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    batch_size: int = 32,
    progress: bool = True,
) -> Iterator[np.ndarray]:
    """Float32 embeddings of ``texts`` (documents), one chunk at a time, in order.

    With a ``folder``, chunks found there are read (memory-mapped) and the others are
    encoded and saved, so only missing work is done.
    """
    starts = range(0, len(texts), chunk_size)
    bar = tqdm(starts, desc="corpus", unit="chunk", disable=not progress or len(starts) < 2)
    for number, start in enumerate(bar):
        path = folder / f"chunk-{number:06d}.npy" if folder is not None else None
        if path is not None and path.is_file():
            logger.debug("reading encoded chunk %s", path)
            yield np.load(path, mmap_mode="r")
            continue
        batch = list(texts[start : start + chunk_size])
        vectors = np.asarray(
            encoder.encode(batch, batch_size=batch_size, show_progress=progress, role="document"),
            dtype=np.float32,
        )
        if vectors.shape[0] != len(batch) or vectors.ndim != 2:
            raise ValueError(f"encoder returned shape {vectors.shape} for {len(batch)} texts")
        if path is not None:
            atomic_write_npy(path, vectors)
        yield vectors
