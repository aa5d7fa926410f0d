"""Atomic writes: at every instant of a folder swap a complete folder is on disk.

Each crash window is hit by making the N-th filesystem call of the swap fail (as
a kill would stop it there), and once by a real SIGKILL between the two renames.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmembed import io
from lmembed.io import atomic_directory, atomic_write_bytes, committed_directory


class Killed(BaseException):
    """Stands for a kill: nothing after the failing call runs."""


def _write(path: Path, version: str) -> None:
    with atomic_directory(path) as tmp:
        (tmp / "a.txt").write_text(version)
        (tmp / "b.txt").write_text(version)


def _contents(folder: Path | None) -> set[str]:
    assert folder is not None, "no complete folder on disk"
    return {(folder / name).read_text() for name in ("a.txt", "b.txt")}


def _fail_call(monkeypatch, owner, name: str, n: int, error: BaseException) -> list[int]:
    """Make the ``n``-th call (0-based) of ``owner.name`` raise ``error``; count the calls."""
    original = getattr(owner, name)
    calls = [0]

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] - 1 == n:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    return calls


# Path.rename: 1st moves the old folder aside, 2nd moves the new one in.
# shutil.rmtree: 1st clears a stale .old, 2nd deletes the moved-aside folder.
WINDOWS = [(Path, "rename", 0), (Path, "rename", 1), (shutil, "rmtree", 0), (shutil, "rmtree", 1)]


@pytest.mark.parametrize(("owner", "name", "n"), WINDOWS, ids=lambda v: str(v))
def test_a_kill_at_any_call_of_the_swap_leaves_a_complete_folder(
    tmp_path, monkeypatch, owner, name, n
):
    path = tmp_path / "checkpoint"
    _write(path, "old")
    calls = _fail_call(monkeypatch, owner, name, n, Killed())
    with pytest.raises(Killed):
        _write(path, "new")
    assert calls[0] > n, "the swap made fewer calls than this window assumes"
    monkeypatch.undo()
    assert _contents(committed_directory(path)) in ({"old"}, {"new"})
    _write(path, "next")  # the next write recovers whatever the kill left
    assert _contents(committed_directory(path)) == {"next"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_kill_between_renames_keeps_the_old_folder_readable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint"
    _write(path, "old")
    _fail_call(monkeypatch, Path, "rename", 1, Killed())
    with pytest.raises(Killed):
        _write(path, "new")
    assert not path.exists()
    assert committed_directory(path) == tmp_path / ".checkpoint.old"
    assert _contents(committed_directory(path)) == {"old"}


def test_sigkill_between_renames_in_a_real_process(tmp_path):
    path = tmp_path / "checkpoint"
    _write(path, "old")
    script = (
        "import sys; from pathlib import Path; from lmembed.io import atomic_directory\n"
        "with atomic_directory(Path(sys.argv[1])) as tmp:\n"
        "    (tmp / 'a.txt').write_text('new'); (tmp / 'b.txt').write_text('new')\n"
    )
    env = {**os.environ, "LMEMBED_FAULT": "checkpoint_swap:1"}
    done = subprocess.run([sys.executable, "-c", script, str(path)], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert not path.exists()
    assert _contents(committed_directory(path)) == {"old"}


def test_full_disk_while_writing_keeps_the_old_folder(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint"
    _write(path, "old")
    _fail_call(monkeypatch, os, "fsync", 0, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        _write(path, "new")
    monkeypatch.undo()
    assert committed_directory(path) == path and _contents(path) == {"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # temp folder removed


def test_no_folder_at_all_is_none(tmp_path):
    assert committed_directory(tmp_path / "missing") is None


def test_atomic_write_bytes_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write_bytes(target, b"old")
    _fail_call(monkeypatch, io.os, "replace", 0, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_remove_partial_writes_deletes_only_temp_folders_of_that_path(tmp_path):
    path = tmp_path / "checkpoint"
    _write(path, "old")
    for stale in (".checkpoint.abc.tmp", ".other.abc.tmp"):
        (tmp_path / stale).mkdir()
    io.remove_partial_writes(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.tmp", "checkpoint"]
