"""NLI triplets (anchor, entailment, contradiction) for contrastive training.

The layout is SimCSE's ``nli_for_simcse.csv``: columns ``sent0, sent1, hard_neg``.
Every problem is reported with file, line and column; no row is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmembed.data._text import read_text, split_lines
from lmembed.data.errors import DataError
from lmembed.data.hub import HubSource, load_hub_rows, looks_like_hub_id

logger = logging.getLogger(__name__)

COLUMNS = ("sent0", "sent1", "hard_neg")
HUB_NLI = HubSource(
    "princeton-nlp/datasets-for-simcse", split="train", data_files="nli_for_simcse.csv"
)
_EXPECTED = f"a header row {','.join(COLUMNS)} and one triplet per row"

# (line or row number, record); record is None for a blank line, which is counted and logged.
Record = tuple[int, Mapping[str, Any] | None]


@dataclass(frozen=True)
class Triplets:
    """Parallel lists: ``anchors[i]`` entails ``positives[i]`` and contradicts ``negatives[i]``."""

    anchors: list[str]
    positives: list[str]
    negatives: list[str]

    def __post_init__(self) -> None:
        if not len(self.anchors) == len(self.positives) == len(self.negatives):
            raise ValueError("anchors, positives and negatives must have the same length")

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, idx: int) -> tuple[str, str, str]:
        return self.anchors[idx], self.positives[idx], self.negatives[idx]


def load_triplets(source: str | Path, limit: int | None = None) -> Triplets:
    """Read triplets from ``.csv``, ``.csv.gz``, ``.jsonl``, ``.parquet`` or a hub dataset id.

    ``limit`` keeps the first ``limit`` triplets (for smoke runs). Raises ``DataError``.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    if looks_like_hub_id(source):
        hub = HUB_NLI if str(source) == HUB_NLI.path else HubSource(str(source), split="train")
        return _collect(str(source), _hub_records(hub), limit, unit="row")
    path = Path(source)
    if not path.is_file():
        raise DataError(
            path,
            "file not found",
            hint=f"check the path, or give a hub dataset id such as {HUB_NLI.path}",
        )
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return _collect(path, _csv_records(path), limit, unit="line")
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _collect(path, _jsonl_records(path), limit, unit="line")
    if name.endswith(".parquet"):
        return _collect(path, _parquet_records(path), limit, unit="row")
    raise DataError(path, "unsupported file type", hint="use .csv, .csv.gz, .jsonl or .parquet")


def _collect(path: str | Path, records: Iterable[Record], limit: int | None, unit: str) -> Triplets:
    columns: tuple[list[str], list[str], list[str]] = ([], [], [])
    blank = 0
    for line, record in records:
        if record is None:
            blank += 1
            continue
        missing = [c for c in COLUMNS if c not in record]
        if missing:
            raise _missing_columns(path, missing, list(record), line=line, unit=unit)
        for column, out in zip(COLUMNS, columns, strict=True):
            out.append(_cell(path, line, column, record[column], unit))
        if len(columns[0]) == limit:
            break
    if blank:
        logger.info("%s: skipped %d blank line(s)", path, blank)
    if not columns[0]:
        raise DataError(path, "no data rows", hint=f"expected {_EXPECTED}")
    logger.info("%s: loaded %d triplets", path, len(columns[0]))
    return Triplets(*columns)


def _cell(path: str | Path, line: int, column: str, value: Any, unit: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        problem = "empty cell"
    elif not isinstance(value, str):
        problem = f"expected text, got {type(value).__name__} {value!r}"
    else:
        return value
    raise DataError(
        path,
        problem,
        line=line,
        column=column,
        unit=unit,
        hint="fill in the sentence or delete the row",
    )


def _missing_columns(
    path: str | Path,
    missing: Sequence[str],
    found: Sequence[str],
    *,
    line: int | None,
    unit: str = "line",
) -> DataError:
    found_text = ", ".join(map(str, found)) or "none"
    return DataError(
        path,
        f"missing column(s) {', '.join(missing)} (found: {found_text})",
        line=line,
        unit=unit,
        hint=f"provide columns {', '.join(COLUMNS)} (SimCSE nli_for_simcse.csv layout)",
    )


def _csv_records(path: Path) -> Iterator[Record]:
    reader = csv.reader(io.StringIO(read_text(path, expected=_EXPECTED), newline=""))
    try:
        header = [name.strip() for name in next(reader)]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise _missing_columns(path, missing, header, line=1)
        start = reader.line_num + 1
        for row in reader:
            if not row:
                yield start, None
            elif len(row) != len(header):
                raise DataError(
                    path,
                    f"{len(row)} fields, but the header has {len(header)}",
                    line=start,
                    hint='quote any cell that contains a comma or newline: "a, b" (RFC 4180)',
                )
            else:
                yield start, dict(zip(header, row, strict=True))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(path, f"malformed CSV ({err})", line=reader.line_num) from None


def _jsonl_records(path: Path) -> Iterator[Record]:
    lines = split_lines(read_text(path, expected="one JSON object per line"))
    for number, line in enumerate(lines, 1):
        if not line.strip():
            yield number, None
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                path,
                f"not valid JSON ({err.msg} at character {err.pos + 1})",
                line=number,
                hint="each line must be one complete JSON object",
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                path,
                f"expected a JSON object, got {type(obj).__name__}",
                line=number,
                hint=f'write objects like {{"{COLUMNS[0]}": "...", ...}}',
            )
        yield number, obj


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"not a readable parquet file ({err})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise _missing_columns(path, missing, table.column_names, line=None)
    values = [table.column(c).to_pylist() for c in COLUMNS]
    for number, row in enumerate(zip(*values, strict=True), 1):
        yield number, dict(zip(COLUMNS, row, strict=True))


def _hub_records(source: HubSource) -> Iterator[Record]:
    yield from enumerate(load_hub_rows(source), 1)
