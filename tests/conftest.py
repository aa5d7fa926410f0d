"""Shared fixtures: tiny random models (see tiny_models.py) and a small triplet file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import ARCHITECTURES, make_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture
def triplets_csv(tmp_path) -> Path:
    """A small triplet file in SimCSE's layout, built from the tiny vocabulary."""
    rows = ["sent0,sent1,hard_neg"]
    subjects = ["a man", "a woman", "the dog", "the cat", "two children", "three people"]
    actions = ["is sitting", "is running", "is eating", "is playing", "is walking"]
    places = ["in the park", "on the street", "at the table", "near the car"]
    for i in range(48):
        s, a, p = subjects[i % 6], actions[i % 5], places[i % 4]
        other = actions[(i + 2) % 5]
        rows.append(f"{s} {a} {p} .,{s} {a} .,{s} {other} inside .")
    path = tmp_path / "triplets.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def sts_tsv(tmp_path) -> Path:
    """A small STS file in the tiny models' vocabulary (a custom eval task), gold 0-5."""
    subjects = ["a man", "a woman", "the dog", "the cat", "two children", "three people"]
    actions = ["is sitting", "is running", "is eating", "is playing", "is walking"]
    rows = ["sentence1\tsentence2\tscore"]
    for i in range(30):
        s, a = subjects[i % 6], actions[i % 5]
        other = actions[(i + i // 5) % 5]
        rows.append(f"{s} {a} .\t{subjects[(i * 7) % 6]} {other} .\t{(i * 37) % 6}")
    path = tmp_path / "dev.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Tiny models gain nothing from threads, and on a busy 2-core machine two threads
    per process oversubscribe the cores (8x slower here). Real-model tests keep them."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
