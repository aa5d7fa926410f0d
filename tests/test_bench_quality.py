"""The equal-budget quality benchmark calls a gap only when it exceeds the seed spread, and
its ``--dtype`` reaches every system's weights."""

from __future__ import annotations

from bench.bench_quality import checks_paragraph, verdict  # noqa: E402
from bench.systems import Recipe  # noqa: E402


def runs(ours: list[float], theirs: list[float]) -> list[dict]:
    return [
        {"scores": {"lmembed": {"average": a}, "other": {"average": b}}}
        for a, b in zip(ours, theirs, strict=True)
    ]


def test_a_gap_larger_than_the_seed_spread_is_called() -> None:
    line = verdict(runs([80.0, 80.5, 80.2], [78.0, 78.4, 78.1]), "other")
    assert "+2.07" in line and "spread 0.50" in line and "**ahead**" in line
    assert "the gap exceeds the seed spread); lmembed ahead with" in line
    assert "3 of 3 seeds" in line
    assert "**behind**" in verdict(runs([78.0, 78.4, 78.1], [80.0, 80.5, 80.2]), "other")


def test_a_gap_within_the_seed_spread_is_not_resolved() -> None:
    line = verdict(runs([79.0, 80.5, 79.6], [79.5, 79.4, 79.6]), "other")
    assert "**not resolved**" in line and "spread 1.50" in line
    assert "not resolved: one seed" in verdict(runs([80.0], [70.0]), "other")


def test_the_recipes_dtype_is_the_one_lmembed_trains_in() -> None:
    assert Recipe(data="x", steps=1).train_config().embedding.dtype == "bf16"
    assert Recipe(data="x", steps=1, dtype="fp32").train_config().embedding.dtype == "fp32"


def test_the_checks_name_only_the_systems_that_ran() -> None:
    cosines = [{"sentence-transformers": {"embedder": {"mean": 0.99991, "min": 0.9991}}}]
    plan = Recipe(data="x", steps=1, dtype="fp32")
    text = checks_paragraph(plan, cosines, ("lmembed", "sentence-transformers"))
    assert "matches `SentenceTransformer.encode` at 0.9999 / 0.9991" in text
    assert "reference" not in text and "bf16" not in text
    assert "none (lmembed ran alone)" in checks_paragraph(plan, [{}], ("lmembed",))
