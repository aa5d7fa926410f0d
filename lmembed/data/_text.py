"""Strict byte-to-text decoding shared by the loaders, so bad bytes are reported by line."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
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


def decode_line(raw: bytes, path: Path, line: int) -> str:
    """One line of a streamed file as text; bad bytes are reported with their line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.end]
        raise DataError(
            path, f"bytes {bad!r} are not valid UTF-8", line=line, hint="re-save the file as UTF-8"
        ) from None


def check_not_blank(path: Path, *, expected: str) -> None:
    """Raise "file is empty" for a file holding only whitespace (reads until the first text)."""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            if chunk.removeprefix(_BOM).strip():
                return
    raise DataError(path, "file is empty", hint=f"expected {expected}")


def ungzipped(path: Path, cache: Path) -> Path:
    """A seekable copy of a ``*.gz`` file: decompressed once, streamed, into ``cache``.

    Random access into gzip needs the whole stream, so the training-data index works on
    this copy. The name holds the source's size and mtime, so an edited file is redone.
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = cache / f"{key.hexdigest()[:20]}-{path.name[:-3]}"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as source:
            shutil.copyfileobj(source, out, 1 << 20)
        os.replace(tmp, target)
    except (OSError, EOFError, zlib.error) as err:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(
            path, f"not a valid gzip file ({err})", hint="re-compress it with gzip"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
