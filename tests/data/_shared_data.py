"""Where the read-only benchmark copy lives; a plain module, not a conftest, so it cannot
shadow the top-level ``conftest`` that other test folders import from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """$LMEMBED_DATA_DIR, else <repo>/../shared/data; skips the test when it is absent."""
    path = Path(
        os.environ.get("LMEMBED_DATA_DIR") or Path(__file__).parents[2].parent / "shared" / "data"
    )
    if not (path / "sts").is_dir():
        pytest.skip(f"shared benchmark data not found at {path}")
    return path
