"""Row sources for training data: csv, tsv, jsonl (each also ``.gz``), parquet, hub datasets.

A source is read twice: ``scan`` streams every row once (to validate it and build the
index), then ``fetch`` reads the rows of one batch on demand by their *position*: the
byte offset of the row for text files, the row number for parquet and hub tables. So
memory holds the index, never the file. Gzipped files are decompressed once into a
seekable copy under ``$LMEMBED_CACHE/data`` (random access into a gzip stream would
mean re-reading it from the start).

* csv: RFC 4180 with a header row; quoted cells may hold commas and newlines.
* tsv: a header row, one row per line, cells split on tabs, **no quoting** (the MS MARCO
  and STS convention: quotes are text).
* jsonl: one JSON object per line; list values (``"neg": ["...", "..."]``) are fine.
* parquet: any schema; a fetch decodes whole row groups (two are cached), so files
  written with small row groups (~10k rows) shuffle fastest.
"""

from __future__ import annotations

import bisect
import csv
import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from lmembed.data._text import check_not_blank, decode_line, ungzipped
from lmembed.data.errors import DataError
from lmembed.data.hub import HubSource, load_hub_rows, looks_like_hub_id
from lmembed.data.records import iter_parquet, numbered_lines, parse_object
from lmembed.io import cache_root

# (line or row number from 1, the record or None for a blank line, its position)
Row = tuple[int, Mapping[str, Any] | None, int]

SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".jsonl", ".jsonl.gz", ".parquet")
HUB_NLI = HubSource(
    "princeton-nlp/datasets-for-simcse", split="train", data_files="nli_for_simcse.csv"
)
_BOM = "\ufeff"


class Source:
    """One table: its column names, a full scan, and random access by position."""

    unit = "line"

    def __init__(self, name: str) -> None:
        self.name = name
        self.columns: list[str] = []

    def scan(self, columns: Sequence[str]) -> Iterator[Row]:
        raise NotImplementedError

    def fetch(self, positions: Sequence[int], columns: Sequence[str]) -> list[Mapping[str, Any]]:
        raise NotImplementedError


class _TextSource(Source):
    """Line-based files; ``self.file`` is the seekable copy (the file itself unless gzipped)."""

    expected = "a header row and one example per row"

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
        check_not_blank(path, expected=self.expected)
        self.file = ungzipped(path, cache_root() / "data") if path.name.endswith(".gz") else path
        check_not_blank(self.file, expected=self.expected)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int]:
        stat = self.file.stat()
        return stat.st_size, stat.st_mtime_ns

    def fetch(self, positions: Sequence[int], columns: Sequence[str]) -> list[Mapping[str, Any]]:
        if self._stat() != self._stamp:
            raise DataError(
                self.name,
                "file changed after it was indexed (rows are read by byte offset)",
                hint="restore the file, or restart training to index it again",
            )
        with self.file.open("rb") as handle:
            return [self._read_at(handle, position) for position in positions]

    def _read_at(self, handle: BinaryIO, position: int) -> Mapping[str, Any]:
        raise NotImplementedError


class JsonlSource(_TextSource):
    expected = "one JSON object per line"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self.file.open("rb") as handle:
            for number, _, text in numbered_lines(handle, self.path, 1):
                if text.strip():
                    self.columns = list(self._parse(text, number))
                    break

    def scan(self, columns: Sequence[str]) -> Iterator[Row]:
        with self.file.open("rb") as handle:
            start = 0
            for number, end, text in numbered_lines(handle, self.path, 1):
                record = self._parse(text, number) if text.strip() else None
                yield number, record, start
                start = end

    def _read_at(self, handle: BinaryIO, position: int) -> Mapping[str, Any]:
        handle.seek(position)
        return json.loads(handle.readline().decode("utf-8").removeprefix(_BOM))

    def _parse(self, text: str, number: int) -> Mapping[str, Any]:
        return parse_object(text, self.name, number, example='{"anchor": "...", "positive": "..."}')


class TsvSource(_TextSource):
    expected = "a header row, then one row per line with tab-separated cells"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self.file.open("rb") as handle:
            header = decode_line(handle.readline(), self.path, 1)
            self.columns = [c.strip() for c in self._cells(header)]

    @staticmethod
    def _cells(text: str) -> list[str]:
        return text.removeprefix(_BOM).rstrip("\n").removesuffix("\r").split("\t")

    def scan(self, columns: Sequence[str]) -> Iterator[Row]:
        with self.file.open("rb") as handle:
            start = len(handle.readline())
            for number, end, text in numbered_lines(handle, self.path, 2):
                offset, start = start, end
                if not text.strip():
                    yield number, None, offset
                    continue
                cells = self._cells(text)
                if len(cells) != len(self.columns):
                    raise DataError(
                        self.name,
                        f"{len(cells)} fields, but the header has {len(self.columns)}",
                        line=number,
                        hint="separate cells with exactly one tab; tabs inside text are not "
                        "allowed in .tsv (use .csv or .jsonl)",
                    )
                yield number, dict(zip(self.columns, cells, strict=True)), offset

    def _read_at(self, handle: BinaryIO, position: int) -> Mapping[str, Any]:
        handle.seek(position)
        cells = self._cells(handle.readline().decode("utf-8"))
        return dict(zip(self.columns, cells, strict=True))


class CsvSource(_TextSource):
    """csv.reader pulls lines lazily, so a row starts where the previous row's lines ended."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self.file.open("rb") as handle:
            feed = _Feed(numbered_lines(handle, self.path, 1))
            try:
                self.columns = [c.strip() for c in next(csv.reader(feed))]
            except csv.Error as err:
                raise DataError(self.name, f"malformed CSV ({err})", line=1) from None

    def scan(self, columns: Sequence[str]) -> Iterator[Row]:
        with self.file.open("rb") as handle:
            feed = _Feed(numbered_lines(handle, self.path, 1))
            reader = csv.reader(feed)
            try:
                next(reader)
                while True:
                    start, offset = feed.line, feed.offset
                    row = next(reader, None)
                    if row is None:
                        return
                    yield start, self._record(row, start), offset
            except csv.Error as err:
                raise DataError(self.name, f"malformed CSV ({err})", line=feed.line - 1) from None

    def _record(self, row: list[str], line: int) -> Mapping[str, Any] | None:
        if not row:
            return None
        if len(row) != len(self.columns):
            raise DataError(
                self.name,
                f"{len(row)} fields, but the header has {len(self.columns)}",
                line=line,
                hint='quote any cell that contains a comma or newline: "a, b" (RFC 4180)',
            )
        return dict(zip(self.columns, row, strict=True))

    def _read_at(self, handle: BinaryIO, position: int) -> Mapping[str, Any]:
        handle.seek(position)
        lines = (raw.decode("utf-8") for raw in handle)
        return dict(zip(self.columns, next(csv.reader(lines)), strict=True))


class _Feed:
    """Lines for csv.reader that remember where the next unread line starts."""

    def __init__(self, lines: Iterator[tuple[int, int, str]]) -> None:
        self._lines = lines
        self.line, self.offset = 1, 0

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        number, end, text = next(self._lines)
        self.line, self.offset = number + 1, end
        return text


class ParquetSource(Source):
    unit = "row"

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(str(path))
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(path, f"not a readable parquet file ({err})") from None
        self.columns = list(self._file.schema_arrow.names)
        meta = self._file.metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._starts = [sum(sizes[:g]) for g in range(len(sizes) + 1)]

    def scan(self, columns: Sequence[str]) -> Iterator[Row]:
        for number, record in iter_parquet(self.name, columns):
            yield number, record, number - 1

    def fetch(self, positions: Sequence[int], columns: Sequence[str]) -> list[Mapping[str, Any]]:
        out = []
        for position in positions:
            group = bisect.bisect_right(self._starts, position) - 1
            table = self._group(group, tuple(columns))
            out.append(table.slice(position - self._starts[group], 1).to_pylist()[0])
        return out

    @functools.lru_cache(maxsize=2)  # noqa: B019 - one source per file, few of them
    def _group(self, group: int, columns: tuple[str, ...]) -> Any:
        return self._file.read_row_group(group, columns=list(columns))


class HubTable(Source):
    """A hub dataset (Arrow files memory-mapped by ``datasets``, so random access is cheap)."""

    unit = "row"

    def __init__(self, hub_id: str) -> None:
        super().__init__(hub_id)
        source = HUB_NLI if hub_id == HUB_NLI.path else HubSource(hub_id, split="train")
        self._rows = load_hub_rows(source)
        names = getattr(self._rows, "column_names", None)
        if names is None:  # a plain list of mappings
            names = list(self._rows[0]) if len(self._rows) else []
        self.columns = list(names)

    def scan(self, columns: Sequence[str]) -> Iterator[Row]:
        for number, record in enumerate(self._rows, 1):
            yield number, record, number - 1

    def fetch(self, positions: Sequence[int], columns: Sequence[str]) -> list[Mapping[str, Any]]:
        return [self._rows[int(position)] for position in positions]


_BY_SUFFIX = {
    ".csv": CsvSource,
    ".tsv": TsvSource,
    ".jsonl": JsonlSource,
    ".parquet": ParquetSource,
}


def open_sources(spec: str | Path) -> Iterator[Source]:
    """The tables of one ``--data`` item: a file, a folder of files (opened one at a time,
    in name order), or a hub dataset id."""
    if looks_like_hub_id(spec):
        yield HubTable(str(spec))
        return
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _kind(p) is not None)
        if not files:
            raise DataError(path, "folder holds no data files", hint=f"add {', '.join(SUFFIXES)}")
        yield from (open_file(p) for p in files)
        return
    if not path.is_file():
        raise DataError(
            path,
            "file not found",
            hint=f"check the path, or give a hub dataset id such as {HUB_NLI.path}",
        )
    yield open_file(path)


def open_file(path: Path) -> Source:
    kind = _kind(path)
    if kind is None:
        raise DataError(path, "unsupported file type", hint=f"use {', '.join(SUFFIXES)}")
    return kind(path)


def _kind(path: Path) -> type[Source] | None:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return _BY_SUFFIX[suffix.removesuffix(".gz")]
    return None


def dataset_name(spec: str | Path) -> str:
    """Short name for logs and ``--mixing weights=``: the file or folder name without suffixes."""
    text = str(spec).rstrip("/")
    if looks_like_hub_id(text):
        return text
    name = Path(text).name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
