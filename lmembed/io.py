"""Filesystem helpers shared by every module: the cache root and atomic writes.

Everything lmembed writes (checkpoints, results, reports, caches) goes through
these functions, so an interrupted process never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmembed.faults import fault_point


def _default_mode(is_dir: bool) -> int:
    """Permissions a plain open()/mkdir() would give (temp files default to 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


def cache_root() -> Path:
    """Root of lmembed's caches: ``$LMEMBED_CACHE`` or ``~/.cache/lmembed``."""
    return Path(os.environ.get("LMEMBED_CACHE") or Path.home() / ".cache" / "lmembed")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder plus rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode(is_dir=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _fsync_path(path: Path) -> None:
    """Flush a file's or folder's entry to disk (a folder's after renames inside it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves before they are renamed."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def _previous(path: Path) -> Path:
    """Where ``atomic_directory`` keeps the replaced folder while the new one moves in."""
    return path.with_name(f".{path.name}.old")


def committed_directory(path: str | Path) -> Path | None:
    """The complete folder a reader of ``path`` should open, or None if there is none.

    ``path`` itself, or, after a kill between ``atomic_directory``'s two renames,
    the previous folder it had moved aside (complete: only whole folders are renamed).
    """
    path = Path(path)
    for candidate in (path, _previous(path)):
        if candidate.is_dir():
            return candidate
    return None


def remove_partial_writes(path: str | Path) -> None:
    """Delete temp folders that killed ``atomic_directory`` calls left beside ``path``.

    Only for folders with one writer (a run's checkpoint): another process's
    write in progress would be deleted too.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder next to ``path``; on success it replaces ``path`` whole.

    Used for checkpoints and adapters: readers see the old folder or the new one,
    never a mix. The new folder is flushed to disk first; then ``path`` moves to
    ``.NAME.old`` and the new folder to ``path``. A kill between the two renames
    leaves ``.NAME.old``, which ``committed_directory`` finds, and which is only
    deleted once the new folder is in place. A failed write (disk full) leaves
    ``path`` untouched and removes the temp folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, _default_mode(is_dir=True))
    try:
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``, keeping a complete folder on disk at every instant."""
    old = _previous(path)
    if path.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        fault_point("checkpoint_swap")
    new.rename(path)
    _fsync_path(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def folder_fingerprint(location: Any) -> list[tuple[str, int, int]] | None:
    """(relative path, size, mtime) of every file under a local folder, for cache keys:
    a model or adapter rewritten in place gets a new key. ``None`` for hub ids and files."""
    if not location or not Path(str(location)).is_dir():
        return None
    root = Path(str(location))
    return [
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]


def npy_bytes(array: Any) -> bytes:
    """``array`` in NumPy's ``.npy`` format (no pickles), for atomic writes and hashing."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def atomic_write_npy(path: str | Path, array: Any) -> None:
    atomic_write_bytes(path, npy_bytes(array))
