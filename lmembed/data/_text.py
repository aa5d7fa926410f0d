"""Strict byte-to-text decoding shared by the loaders, so bad bytes are reported by line."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from lmembed.data.errors import DataError

_BOM = b"\xef\xbb\xbf"


def read_text(path: Path, *, expected: str) -> str:
    """Whole file as text; gunzips ``*.gz``. ``expected`` describes valid content for hints."""
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(
                path, f"not a valid gzip file ({err})", hint="re-compress it with gzip"
            ) from None
    data = data.removeprefix(_BOM)
    if not data.strip():
        raise DataError(path, "file is empty", hint=f"expected {expected}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        bad = data[err.start : err.end]
        raise DataError(
            path, f"bytes {bad!r} are not valid UTF-8", line=line, hint="re-save the file as UTF-8"
        ) from None


def split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only (sentences may hold other Unicode separators); drop a final
    empty piece and one trailing ``\\r`` per line, which are line ends, not content."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]
