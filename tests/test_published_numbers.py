"""Every figure in the README's results table comes from committed result files
(docs/results/demo, written by `lmembed demo --publish docs/results/demo`)."""

from __future__ import annotations

import json
from pathlib import Path

from lmembed.experiments.demo import results_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "demo"


def test_the_readme_results_table_is_made_from_the_result_files():
    table = results_table(RESULTS)
    assert table in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_table_reads_the_numbers_it_shows(tmp_path):
    """Teeth: a changed score in a result file changes the table."""
    for path in RESULTS.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    after = json.loads((tmp_path / "after.json").read_text())
    task = next(iter(after["tasks"]))
    after["tasks"][task]["spearman"] += 1.0
    (tmp_path / "after.json").write_text(json.dumps(after))
    assert results_table(tmp_path) != results_table(RESULTS)
