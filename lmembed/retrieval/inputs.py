"""Mining inputs: (anchor, positive) pairs and corpus texts, read strictly.

Rows come from the training-data formats (``lmembed.data.formats``: jsonl, csv, tsv,
parquet, ``.gz``, folders); pairs need an anchor column
(``anchor``, ``query`` or ``sent0``) and a positive column (``positive``, ``pos`` or
``sent1``; in jsonl ``pos`` may be a list, as in FlagEmbedding files). A corpus is
``.txt`` (one text a line), ``.jsonl`` (``text``, optional ``title``) or ``.csv``/``.tsv``
with a ``text`` column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lmembed.data._text import read_text, split_lines
from lmembed.data.errors import DataError
from lmembed.data.formats import open_sources

ANCHOR_COLUMNS = ("anchor", "query", "sent0")
POSITIVE_COLUMNS = ("positive", "pos", "sent1")


def read_pairs(path: str | Path) -> dict[str, list[str]]:
    """Anchor -> its positives (file order, no repeats). Raises ``DataError``."""
    path = _existing(path)
    grouped: dict[str, list[str]] = {}
    for line, record in _rows(path, "pairs with anchor and positive columns"):
        anchor = _text(path, line, record, ANCHOR_COLUMNS)
        positives = record.get(_pick(path, line, record, POSITIVE_COLUMNS))
        for positive in positives if isinstance(positives, list) else [positives]:
            if not isinstance(positive, str) or not positive.strip():
                raise DataError(path, "positive must be non-empty text", line=line)
            known = grouped.setdefault(anchor, [])
            if positive not in known:
                known.append(positive)
    if not grouped:
        raise DataError(path, "no pairs found", hint="one (anchor, positive) pair a row")
    return grouped


def read_corpus(path: str | Path) -> list[str]:
    """Corpus texts in file order (a jsonl title is joined as ``title + " " + text``)."""
    path = _existing(path)
    if path.name.lower().removesuffix(".gz").endswith(".txt"):
        lines = split_lines(read_text(path, expected="one text a line"))
        texts = [line for line in lines if line.strip()]
    else:
        texts = []
        for line, record in _rows(path, "a text column"):
            text = _text(path, line, record, ("text",))
            title = record.get("title")
            texts.append(f"{title} {text}".strip() if isinstance(title, str) and title else text)
    if not texts:
        raise DataError(path, "no texts found")
    return texts


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    return path


def _rows(path: Path, expected: str) -> Iterator[tuple[int, dict]]:
    """(line or row, record) of every non-blank row, read by the training-data formats
    (jsonl, csv, tsv, parquet, .gz, folders)."""
    found = False
    for source in open_sources(path):
        for number, record, _ in source.scan(source.columns):
            if record is not None:
                found = True
                yield number, dict(record)
    if not found:
        raise DataError(path, "no rows", hint=f"expected {expected}")


def _pick(path: Path, line: int, record: dict, names: tuple[str, ...]) -> str:
    for name in names:
        if name in record:
            return name
    raise DataError(
        path,
        f"no {' / '.join(names)} column (found {list(record)[:6]})",
        line=line,
        hint=f"name the column one of {', '.join(names)}",
    )


def _text(path: Path, line: int, record: dict, names: tuple[str, ...]) -> str:
    column = _pick(path, line, record, names)
    value = record[column]
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, "empty or non-text cell", line=line, column=column)
    return value
