"""Helpers for the retrieval tests: a small BEIR-layout task, and shared-data lookup."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny_models import SHARED_DATA

SUBJECTS = ["a man", "a woman", "the dog", "the cat", "two children", "three people"]
ACTIONS = ["is sitting", "is running", "is eating", "is playing", "is walking"]
PLACES = ["in the park", "on the street", "at the table", "near the car"]


def write_beir(folder: Path, titles: bool = True) -> Path:
    """24 documents (some with titles), 8 queries, graded qrels (0-2) in ``qrels/test.tsv``."""
    docs = []
    for i in range(24):
        title = f"doc {i}" if titles and i % 3 == 0 else ""
        text = f"{SUBJECTS[i % 6]} {ACTIONS[i % 5]} {PLACES[i % 4]} ."
        docs.append({"_id": f"d{i}", "title": title, "text": text})
    queries = [
        {"_id": f"q{i}", "text": f"{SUBJECTS[i % 6]} {ACTIONS[(i + 1) % 5]}"} for i in range(8)
    ]
    qrels = ["query-id\tcorpus-id\tscore"]
    for i in range(8):
        qrels += [
            f"q{i}\td{(3 * i) % 24}\t2",
            f"q{i}\td{(3 * i + 5) % 24}\t1",
            f"q{i}\td{i + 1}\t0",
        ]
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    _jsonl(folder / "corpus.jsonl", docs)
    _jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def require_shared(relative: str) -> Path:
    """``SHARED_DATA / relative``; when absent the test fails under CI and skips elsewhere."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"shared data not found: {path} (set LMEMBED_DATA_DIR)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path
