"""The scorer against sentence-transformers and MTEB's published all-MiniLM-L6-v2 numbers."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from _minilm import minilm as load_minilm
from tiny_models import shared_data_dir as find_shared_data

from lmembed.data import ALL_TASKS, load_sts
from lmembed.evaluation import evaluate, score_task

# MTEB leaderboard, all-MiniLM-L6-v2, cosine Spearman x100.
MTEB_MINILM = {"stsb": 82.03, "sickr": 77.58}
MTEB_MINILM_AVERAGE = 80.16


@pytest.fixture(scope="module")
def shared_data_dir() -> Path:
    return find_shared_data()


@pytest.fixture
def minilm():
    with load_minilm() as encoder:
        yield encoder


@pytest.mark.integration
@pytest.mark.parametrize(("name", "n"), [("stsb", 200), ("biosses", 50)])
def test_matches_sentence_transformers_evaluator(
    minilm, shared_data_dir: Path, name: str, n: int
) -> None:
    """Same model, same pairs: our Spearman/Pearson equal EmbeddingSimilarityEvaluator's."""
    from sentence_transformers.sentence_transformer.evaluation import (
        EmbeddingSimilarityEvaluator,
    )

    task = load_sts(name, shared_data_dir)
    task = dataclasses.replace(
        task,
        sentences1=task.sentences1[:n],
        sentences2=task.sentences2[:n],
        scores=task.scores[:n],
    )
    ours = score_task(minilm, task, batch_size=32, show_progress=False)
    evaluator = EmbeddingSimilarityEvaluator(
        task.sentences1,
        task.sentences2,
        task.scores.tolist(),
        batch_size=32,
        similarity_fn_names=["cosine"],
        name=name,
        write_csv=False,
    )
    theirs = evaluator(minilm.model)
    assert ours.pairs == n
    assert ours.spearman / 100 == pytest.approx(theirs[f"{name}_spearman_cosine"], abs=1e-6)
    assert ours.pearson / 100 == pytest.approx(theirs[f"{name}_pearson_cosine"], abs=1e-6)


@pytest.mark.integration
def test_reproduces_mteb_minilm_on_stsb(minilm, shared_data_dir: Path) -> None:
    """The CI half of the check below: STSb test (1,379 pairs) in seconds."""
    result = evaluate(minilm, ["stsb"], shared_data_dir, batch_size=64, progress=False, cache=False)
    assert result.tasks["stsb"].spearman == pytest.approx(MTEB_MINILM["stsb"], abs=0.15)


@pytest.mark.integration
@pytest.mark.published
def test_reproduces_mteb_minilm(minilm, shared_data_dir: Path) -> None:
    """All nine tasks (about 3 min on 2 cores): run by hand, `pytest -m published`."""
    started = time.perf_counter()
    result = evaluate(
        minilm, "all", shared_data_dir, batch_size=64, progress=False, cache=False
    ).to_dict()
    elapsed = time.perf_counter() - started
    spearman = {name: round(score["spearman"], 2) for name, score in result["tasks"].items()}
    print(f"\nall-MiniLM-L6-v2 Spearman x100: {spearman}")
    print(f"average {result['average']['spearman']:.2f}, {elapsed:.0f} s")
    assert list(result["tasks"]) == list(ALL_TASKS)
    for name, published in MTEB_MINILM.items():
        assert result["tasks"][name]["spearman"] == pytest.approx(published, abs=0.15)
    assert result["average"]["spearman"] == pytest.approx(MTEB_MINILM_AVERAGE, abs=0.15)
