"""Fetch the STS benchmarks and SimCSE NLI from the hub into the local data-dir layout.

Conversion (``write_sts_tsv``, ``write_triplets_csv``) is pure and tested on fixtures;
``download`` only adds the hub fetch, which is injectable as ``loader``.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmembed.data.errors import DataError
from lmembed.data.hub import HubSource, load_hub_rows
from lmembed.data.sts import ALL_TASKS, HEADER, TASKS, parse_score
from lmembed.data.triplets import COLUMNS, HUB_NLI
from lmembed.io import atomic_write_text

logger = logging.getLogger(__name__)

# MTEB's copies; all have columns sentence1, sentence2, score.
HUB_STS: dict[str, HubSource] = {
    "sts12": HubSource("mteb/sts12-sts"),
    "sts13": HubSource("mteb/sts13-sts"),
    "sts14": HubSource("mteb/sts14-sts"),
    "sts15": HubSource("mteb/sts15-sts"),
    "sts16": HubSource("mteb/sts16-sts"),
    "sts17": HubSource("mteb/sts17-crosslingual-sts", config="en-en"),
    "stsb": HubSource("mteb/stsbenchmark-sts"),
    "biosses": HubSource("mteb/biosses-sts"),
    "sickr": HubSource("mteb/sickr-sts"),
    "stsb-dev": HubSource("mteb/stsbenchmark-sts", split="validation"),
}
# stsb-dev is included because training validates on it.
DOWNLOAD_TASKS = (*ALL_TASKS, "stsb-dev")
NLI_FILENAME = "nli/nli_for_simcse.csv"

Loader = Callable[[HubSource], Iterable[Mapping[str, Any]]]
_BREAKS = re.compile(r"[\t\r\n]")


def write_sts_tsv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write ``sentence1, sentence2, score`` rows as the no-quoting TSV; returns the row count.

    Tabs and line breaks inside a sentence would split the row, so each becomes a
    space; how many sentences were changed is logged.
    """
    out = ["\t".join(HEADER)]
    changed = 0
    for number, row in enumerate(rows, 1):
        cells = []
        for column in HEADER[:2]:
            text = _text(path, number, column, row)
            clean = _BREAKS.sub(" ", text)
            changed += clean != text
            cells.append(clean)
        cells.append(_format_score(path, number, row.get("score")))
        out.append("\t".join(cells))
    if changed:
        logger.warning("%s: replaced tabs/line breaks with spaces in %d sentence(s)", path, changed)
    atomic_write_text(path, "\n".join(out) + "\n")
    return len(out) - 1


def write_triplets_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write ``sent0, sent1, hard_neg`` rows as RFC-4180 CSV; returns the row count."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for count, row in enumerate(rows, 1):
        writer.writerow([_text(path, count, column, row) for column in COLUMNS])
    atomic_write_text(path, buffer.getvalue())
    return count


def download(
    to: str | Path,
    tasks: Sequence[str] = DOWNLOAD_TASKS,
    nli: bool = True,
    *,
    overwrite: bool = False,
    loader: Loader = load_hub_rows,
) -> dict[str, Path]:
    """Fetch ``tasks`` (and SimCSE NLI when ``nli``) into ``to``; returns name -> file.

    Existing files are kept unless ``overwrite``, so an interrupted download resumes.
    """
    root = Path(to)
    unknown = [t for t in tasks if t not in HUB_STS]
    if unknown:
        raise ValueError(
            f"no hub source for task(s) {', '.join(unknown)}; downloadable: {', '.join(HUB_STS)}"
        )
    jobs: list[tuple[str, str, HubSource, Callable[..., int]]] = [
        (name, TASKS[name].filename, HUB_STS[name], write_sts_tsv) for name in tasks
    ]
    if nli:
        jobs.append(("nli", NLI_FILENAME, HUB_NLI, write_triplets_csv))
    written: dict[str, Path] = {}
    for name, filename, source, write in jobs:
        path = root / filename
        written[name] = path
        if path.exists() and not overwrite:
            logger.info("%s: exists, skipping %s (pass overwrite to refetch)", path, name)
            continue
        logger.info("fetching %s from %s", name, source.path)
        count = write(loader(source), path)
        expected = TASKS[name].count if name in TASKS else None
        if expected is not None and count != expected:
            logger.warning("%s: wrote %d pairs, the canonical count is %d", path, count, expected)
    return written


def _text(path: str | Path, number: int, column: str, row: Mapping[str, Any]) -> str:
    value = row.get(column)
    if not isinstance(value, str):
        raise DataError(
            path,
            f"source row has {value!r} instead of text",
            line=number,
            column=column,
            unit="row",
            hint="the hub dataset is not in the expected layout",
        )
    return value


def _format_score(path: str | Path, number: int, value: Any) -> str:
    """Shortest text that reads back as the same number (float32 sources print as 2.4)."""
    score = parse_score(path, number, value, "the hub dataset is not in the expected layout", "row")
    as32 = np.float32(score)
    return str(as32) if float(as32) == score else repr(score)
