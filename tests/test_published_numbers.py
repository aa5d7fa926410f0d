"""The README's results table and the quality page's demo figures come from committed files
(docs/results/demo, written by `lmembed demo --publish docs/results/demo`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lmembed.experiments.demo import results_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "demo"


def test_the_readme_results_table_is_made_from_the_result_files():
    table = results_table(RESULTS)
    assert table in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_table_reads_the_numbers_it_shows(tmp_path):
    """Teeth: a changed score in a result file changes the table."""
    copy = shutil.copytree(RESULTS, tmp_path / "demo")
    after = json.loads((copy / "after.json").read_text())
    task = next(iter(after["tasks"]))
    after["tasks"][task]["spearman"] += 1.0
    (copy / "after.json").write_text(json.dumps(after))
    assert results_table(copy) != results_table(RESULTS)


def test_the_quality_page_shows_the_same_table():
    table = results_table(RESULTS)
    assert table in (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")


def test_the_nine_task_table_comes_from_its_result_files():
    """docs/quality.md's nine-task table: base models, the recipes (means over seeds), MiniLM."""
    from bench.diagnostics.selection import nine_task_summary, nine_task_table

    quality = (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")
    assert nine_task_summary() in quality  # the page's headline figures
    assert nine_task_table() in quality


def test_the_recipe_selections_come_from_their_result_files():
    """docs/quality.md's STSb-dev selections: the LoRA targets at both budgets, and the
    weight average against the last step."""
    from bench.diagnostics import selection

    quality = (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")
    for table in (selection.demo_budget_table, selection.thirty_minute_table,
                  selection.weight_average_table, selection.search_table):  # fmt: skip
        assert table() in quality, table.__name__


def test_the_gpu_carry_table_comes_from_its_result_files():
    """docs/quality.md's zeroed-rows table: counts and fp32 CPU scores of the carried model."""
    from bench.diagnostics.zeroed_rows import table

    assert table() in (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")


def test_the_training_guide_quotes_the_step_memory_results():
    """docs/training.md's before/after peak over steps: the first and the default variant
    of bench/results/step_memory.json (medians over its processes)."""
    import statistics

    runs = json.loads((ROOT / "bench" / "results" / "step_memory.json").read_text())["runs"]
    default = next(name for name in runs if "default" in name)
    before, after = (statistics.median(r["peak_mb"] for r in runs[name])
                     for name in (next(iter(runs)), default))  # fmt: skip
    guide = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert f"peak {before:,.0f} MB before, {after:,.0f} MB after" in guide


def test_the_readme_gives_the_demos_peak_memory_from_the_memory_results():
    """The README's demo line: the peak of `lmembed demo` from an empty cache, in
    bench/results/memory.json (`python -m bench.bench_memory`)."""
    from bench.bench_memory import peak

    runs = json.loads((ROOT / "bench" / "results" / "memory.json").read_text())["runs"]
    demo = next(records for name, records in runs.items() if name.startswith("demo"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"peak memory {peak(demo):,.0f} MB" in readme


def test_the_distillation_tables_come_from_their_result_files():
    """docs/quality.md's distillation study: STSb dev, nine tasks, retrieval, time."""
    from bench.diagnostics.distill_results import nine_task_table, summary_table

    quality = (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")
    assert summary_table() in quality
    assert nine_task_table() in quality
