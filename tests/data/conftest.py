from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _shared_data_dir() -> Path:
    """The read-only benchmark copy: $LMEMBED_DATA_DIR, else <repo>/../shared/data."""
    return Path(
        os.environ.get("LMEMBED_DATA_DIR") or Path(__file__).parents[2].parent / "shared" / "data"
    )


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = _shared_data_dir()
    if not (path / "sts").is_dir():
        pytest.skip(f"shared benchmark data not found at {path}")
    return path
