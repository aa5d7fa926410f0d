from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from tiny_models import shared_data_dir as find_shared_data

from lmembed.data import (
    ALL_TASKS,
    QUICK_TASKS,
    TASKS,
    DataError,
    load_sts,
    resolve_data_dir,
    resolve_tasks,
)

HEADER = "sentence1\tsentence2\tscore\n"


@pytest.fixture(scope="module")
def shared_data_dir() -> Path:
    return find_shared_data()


def _data_dir(tmp_path: Path, text: str, filename: str = "sts/stsb_test.tsv") -> Path:
    path = tmp_path / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return tmp_path


def _error(data_dir: Path, name: str = "stsb") -> DataError:
    with pytest.raises(DataError) as info:
        load_sts(name, data_dir)
    return info.value


def test_registry() -> None:
    assert len(ALL_TASKS) == 9 and set(ALL_TASKS) < set(TASKS)
    assert QUICK_TASKS == ("stsb", "biosses", "sts17")
    assert TASKS["sickr"].count == 9927 and TASKS["sickr-test"].count == 4927


def test_resolve_tasks() -> None:
    assert resolve_tasks("all") == list(ALL_TASKS)
    assert resolve_tasks("quick") == list(QUICK_TASKS)
    assert resolve_tasks("stsb, SICKR,stsb") == ["stsb", "sickr"]
    assert resolve_tasks(["quick", "sts12"]) == [*QUICK_TASKS, "sts12"]
    with pytest.raises(ValueError, match="unknown STS task 'sts99'.*valid names: all, quick"):
        resolve_tasks("stsb,sts99")
    with pytest.raises(ValueError, match="no STS tasks"):
        resolve_tasks(" , ")


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMEMBED_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="--data-dir.*LMEMBED_DATA_DIR.*lmembed data download"):
        resolve_data_dir(None)
    monkeypatch.setenv("LMEMBED_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    with pytest.raises(DataError, match="data dir not found"):
        resolve_data_dir(tmp_path / "missing")


def test_reads_verbatim(tmp_path: Path) -> None:
    text = HEADER.replace("\n", "\tgenre\n") + ' He said "no" \tA "quoted, odd" one\t4.5\tnews\n'
    task = load_sts("stsb", _data_dir(tmp_path, text + "x\ty\t0\tnews\n"))
    assert task.sentences1 == [' He said "no" ', "x"]
    assert task.sentences2 == ['A "quoted, odd" one', "y"]
    assert task.scores.dtype == np.float64 and list(task.scores) == [4.5, 0.0]
    assert task.path == tmp_path / "sts/stsb_test.tsv" and len(task) == 2


def test_count_mismatch_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lmembed"):
        load_sts("stsb", _data_dir(tmp_path, HEADER + "a\tb\t1\n"))
    assert "has 1 pairs, the canonical release has 1379" in caplog.text


def test_missing_file_says_how_to_get_it(tmp_path: Path) -> None:
    err = _error(tmp_path, "biosses")
    assert err.path == str(tmp_path / "sts/biosses.tsv")
    assert "'biosses'" in str(err) and "lmembed data download --to" in str(err)


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("sentence1,sentence2,score\na\tb\t1\n", 1, None, "expected ['sentence1'"),
        (HEADER + "a\tb\t1\nonly one column\n", 3, None, "1 tab-separated column(s)"),
        (HEADER + "a\tb\t1\n\na\tb\t2\n", 3, None, "need at least 3"),
        (HEADER + "a\tb\t1\na\tb\tfive\n", 3, "score", "score 'five' is not a number"),
        (HEADER + "a\tb\tnan\n", 2, "score", "is not a number"),
        (HEADER, 2, None, "no sentence pairs"),
        ("", None, None, "file is empty"),
    ],
)
def test_garbled_file(tmp_path: Path, text: str, line, column, fragment: str) -> None:
    err = _error(_data_dir(tmp_path, text))
    assert (err.line, err.column) == (line, column)
    assert fragment in str(err) and str(tmp_path / "sts/stsb_test.tsv") in str(err)


def test_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sts/stsb_test.tsv"
    path.parent.mkdir(parents=True)
    path.write_bytes(HEADER.encode() + b"a\tb\t1\n\xff\xfe\tb\t2\n")
    err = _error(tmp_path)
    assert err.line == 3 and "not valid UTF-8" in str(err)


def test_crlf_line_ends_are_not_content(tmp_path: Path) -> None:
    task = load_sts("stsb", _data_dir(tmp_path, HEADER.replace("\n", "\r\n") + "a \tb \t1\r\n"))
    assert task.sentences2 == ["b "] and list(task.scores) == [1.0]


def test_shared_files_have_canonical_counts(shared_data_dir: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lmembed"):
        counts = {name: len(load_sts(name, shared_data_dir)) for name in TASKS}
    assert counts == {name: info.count for name, info in TASKS.items()}
    assert not caplog.records


def test_shared_quote_and_spaces_verbatim(shared_data_dir: Path) -> None:
    stsb = load_sts("stsb", shared_data_dir)
    # Line 650 of stsb_test.tsv has an unbalanced quote; CSV-style quoting would swallow
    # the following lines into one cell.
    assert stsb.sentences1[648] == "The rule - When in doubt throw it out!"
    assert stsb.sentences2[648] == 'I always go by the rule "When in doubt, throw it out!'
    assert stsb.scores[648] == 4.0
    sts14 = load_sts("sts14", shared_data_dir)
    assert (
        "Also, who's to say there aren't testimonies from \"real\" health experts on there?"
        in sts14.sentences2
    )
    biosses = load_sts("biosses", shared_data_dir)
    assert biosses.sentences2[0].endswith("lung cancer. ")  # trailing space kept
