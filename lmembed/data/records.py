"""Reading records from files: the one home of the line, JSON-lines and parquet readers.

Every reader streams (memory holds one line or one parquet batch), numbers lines and
rows from 1, and reports problems as ``DataError`` naming the file and the line or row:

* ``numbered_lines``: lines of an open binary handle with their byte offsets (for
  readers that seek back to a row later, like the training-data index);
* ``iter_lines``: ``(line number, text)`` of a file, ``*.gz`` decompressed on the fly;
* ``iter_tsv`` / ``iter_csv``: ``(line number, cells)`` of a tab-separated file or an
  RFC 4180 CSV file (quoted cells may span lines: the row's first line is given);
* ``iter_jsonl``: ``(line number, object)`` of a JSON-lines file, blank lines skipped;
* ``iter_parquet``: ``(row number, record)`` of a parquet file.

Lines are split on ``\\n`` only (texts may hold other Unicode separators); the line end
(``\\n`` and one ``\\r`` before it) is not part of a line's text, and a UTF-8 byte-order
mark at the start of the file is dropped.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from lmembed.data._text import decode_line
from lmembed.data.errors import DataError

_BOM = "\ufeff"


def numbered_lines(
    handle: BinaryIO, path: str | Path, first: int = 1
) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset just after the line, text *with* its line end) from the
    handle's position on; ``first`` numbers the first line read. Bad UTF-8 raises a
    ``DataError`` with its line; a BOM at byte 0 is dropped."""
    number, offset = first, handle.tell()
    for raw in handle:
        text = decode_line(raw, Path(path), number)
        yield number, offset + len(raw), text.removeprefix(_BOM) if offset == 0 else text
        number += 1
        offset += len(raw)


def iter_lines(path: str | Path, *, expected: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text without its line end)`` for every line, blank ones included.

    ``*.gz`` files are decompressed as they are read; a corrupt one raises "not a valid
    gzip file". With ``expected`` (what valid content looks like, for the hint), a file
    holding only whitespace raises "file is empty" before any line is yielded.
    """
    path = Path(path)
    lines = _lines(path)
    if expected is not None:
        lines = _not_blank(lines, path, expected)
    for number, text in lines:
        yield number, text.removesuffix("\n").removesuffix("\r")


def iter_tsv(path: str | Path, *, expected: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` for every line, split on tabs (a blank line is ``[""]``)."""
    for number, text in iter_lines(path, expected=expected):
        yield number, text.split("\t")


def iter_csv(path: str | Path, *, expected: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number where the row starts, cells)`` for every row (a blank line is ``[]``);
    malformed CSV (an unclosed quote, say) raises a ``DataError`` with its line."""
    read = {"line": 0}

    def feed() -> Iterator[str]:
        for number, text in iter_lines(path, expected=expected):
            read["line"] = number
            yield text + "\n"

    reader = csv.reader(feed(), strict=True)
    while True:
        start = read["line"] + 1
        try:
            row = next(reader, None)
        except csv.Error as err:
            raise DataError(path, f"malformed CSV ({err})", line=read["line"]) from None
        if row is None:
            return
        yield start, row


def iter_jsonl(
    path: str | Path,
    *,
    expected: str | None = None,
    example: str | None = None,
    hint: str | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file (``*.gz``
    too). A line that is not valid JSON, or not a JSON object, raises a ``DataError``
    naming the file and line. ``expected``: as for ``iter_lines`` (an all-blank file is
    then an error, else it has no records); ``example``/``hint``: see ``parse_object``."""
    for number, text in iter_lines(path, expected=expected):
        if text.strip():
            yield number, parse_object(text, path, number, example=example, hint=hint)


def parse_object(
    text: str,
    path: str | Path,
    line: int,
    *,
    example: str | None = None,
    hint: str | None = None,
) -> dict[str, Any]:
    """One JSON-lines line as a dict, or a ``DataError`` naming ``path`` and ``line``.

    ``example`` shows a valid object in the hint for a line holding some other JSON
    value; ``hint`` replaces the hint for a line that is not valid JSON.
    """
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        detail = f"{err.msg} at character {err.pos + 1}" if hasattr(err, "pos") else "too deep"
        raise DataError(
            path,
            f"not valid JSON ({detail})",
            line=line,
            hint=hint or "each line must be one complete JSON object",
        ) from None
    if not isinstance(record, dict):
        raise DataError(
            path,
            f"expected a JSON object, got {type(record).__name__}",
            line=line,
            hint=f"write objects like {example}" if example else "write one JSON object per line",
        )
    return record


def iter_parquet(
    path: str | Path, columns: Sequence[str] | None = None, *, batch_size: int = 8192
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, record)`` of a parquet file, read ``batch_size`` rows at a time.

    ``columns`` (default: all) must all exist, else a ``DataError`` names the first one
    missing; an unreadable file raises "not a readable parquet file".
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"not a readable parquet file ({err})") from None
    names = table.schema_arrow.names
    missing = [c for c in columns or () if c not in names]
    if missing:
        raise DataError(path, "missing column", column=missing[0], unit="row",
                        hint=f"columns present: {names}")  # fmt: skip
    number = 0
    wanted = None if columns is None else list(columns)
    for batch in table.iter_batches(batch_size=batch_size, columns=wanted):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text with its line end); gzip errors become a ``DataError``."""
    if not path.name.lower().endswith(".gz"):
        with path.open("rb") as handle:
            for number, _, text in numbered_lines(handle, path):
                yield number, text
        return
    try:
        with gzip.open(path, "rb") as handle:
            for number, _, text in numbered_lines(handle, path):  # type: ignore[arg-type]
                yield number, text
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            path, f"not a valid gzip file ({err})", hint="re-compress it with gzip"
        ) from None


def _not_blank(
    lines: Iterator[tuple[int, str]], path: Path, expected: str
) -> Iterator[tuple[int, str]]:
    """The lines unchanged, or "file is empty" if all are whitespace (checked up front:
    leading blank lines are held until the first line with text)."""
    held = []
    for number, text in lines:
        held.append((number, text))
        if text.strip(" \t\n\r\f\v"):  # ASCII whitespace, as bytes.strip()
            break
    else:
        raise DataError(path, "file is empty", hint=f"expected {expected}")
    yield from held
    yield from lines
