from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A few pairs per task in the shared layout: UTF-8 TSV, header row, no quoting.
PAIRS = [
    ("a man is playing a guitar .", "a man plays the guitar .", 4.8),
    ("a woman is slicing an onion .", "a woman cuts an onion .", 4.2),
    ("the dog runs in the park .", "a cat sleeps on the sofa .", 0.4),
    ("two children are eating .", "the kids have lunch .", 3.6),
    ("a plane is taking off .", "an airplane departs .", 4.6),
    ('he said "no" twice .', "she laughed at the joke .", 0.2),
    ("three people walk near the car .", "people walk by a car .", 3.1),
    ("the sun is rising .", "a man is reading a book .", 0.0),
]


@pytest.fixture(scope="session")
def sts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny STS data dir with the files of stsb and biosses."""
    root = tmp_path_factory.mktemp("sts_data")
    (root / "sts").mkdir()
    for offset, filename in enumerate(("stsb_test.tsv", "biosses.tsv")):
        rows = ["sentence1\tsentence2\tscore"]
        rows += [f"{a}\t{b}\t{(score + offset) % 5:.1f}" for a, b, score in PAIRS]
        (root / "sts" / filename).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def nli_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training triplets in SimCSE's layout."""
    path = tmp_path_factory.mktemp("nli") / "triplets.csv"
    rows = ["sent0,sent1,hard_neg"]
    rows += [f"{a},{b},{PAIRS[(i + 2) % len(PAIRS)][1]}" for i, (a, b, _) in enumerate(PAIRS)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep score caches out of the user's ~/.cache and the CPU lock off."""
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("LMEMBED_CPU_LOCK", raising=False)
