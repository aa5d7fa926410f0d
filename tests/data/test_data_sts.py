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


# Own STS files (--tasks path/to/pairs.tsv|csv|jsonl) and the score range warning.


def _own(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


OWN_FILES = {
    "pairs.tsv": HEADER + 'A "q" \tb\t4.5\nc\td\t0\n',
    "pairs.csv": 'score,sentence2,sentence1\n4.5,b,"A ""q"" "\n0,d,c\n',
    "pairs.jsonl": '{"sentence1": "A \\"q\\" ", "sentence2": "b", "score": 4.5}\n\n'
    '{"sentence2": "d", "sentence1": "c", "score": "0"}\n',
}


@pytest.mark.parametrize("name", sorted(OWN_FILES))
def test_own_file_in_each_format(tmp_path: Path, name: str) -> None:
    path = _own(tmp_path, name, OWN_FILES[name])
    assert resolve_tasks(f"stsb,{path}") == ["stsb", str(path)]
    task = load_sts(str(path))  # no data dir needed
    assert task.name == str(path) and task.path == path
    assert task.sentences1 == ['A "q" ', "c"] and task.sentences2 == ["b", "d"]
    assert list(task.scores) == [4.5, 0.0]


@pytest.mark.parametrize(
    ("name", "text", "line", "column", "fragment"),
    [
        ("p.csv", "sentence1,score\na,1\n", 1, None, "lacks sentence2"),
        ("p.csv", "sentence1,sentence2,score\na,b,1\na,b\n", 3, None, "2 column(s)"),
        ("p.csv", 'sentence1,sentence2,score\n"a,b,1\n', 2, None, "malformed CSV"),
        ("p.csv", "sentence1,sentence2,score\na,b,x\n", 2, "score", "'x' is not a number"),
        ("p.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n{oops\n', 2, None, "JSON"),
        ("p.jsonl", "[1, 2]\n", 1, None, "expected a JSON object"),
        ("p.jsonl", '{"sentence1": "a", "score": 1}\n', 1, None, "lacks sentence2"),
        ("p.jsonl", '{"sentence1": 3, "sentence2": "b", "score": 1}\n', 1, "sentence1", "string"),
        ("p.jsonl", '{"sentence1": "a", "sentence2": "b", "score": true}\n', 1, "score", "number"),
        ("p.tsv", "sentence1\tsentence2\tscore\n", 2, None, "no sentence pairs"),
        ("missing.tsv", None, None, None, "STS file not found"),
    ],
)
def test_own_file_errors(tmp_path: Path, name, text, line, column, fragment) -> None:
    path = _own(tmp_path, name, text) if text is not None else tmp_path / name
    with pytest.raises(DataError) as info:
        load_sts(str(path))
    assert (info.value.line, info.value.column) == (line, column)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_score_out_of_range_warns_with_file_line_and_range(tmp_path, caplog) -> None:
    path = _own(tmp_path, "pairs.tsv", HEADER + "a\tb\t4\nc\td\t17\ne\tf\t-1\n")
    with caplog.at_level(logging.INFO, logger="lmembed"):
        task = load_sts(str(path))
    assert list(task.scores) == [4.0, 17.0, -1.0]  # a warning, not an error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"{path}, line 3: score 17 is outside the expected range 0-5" in message
    assert "2 of 3 scores" in message and "observed range -1-17" in message
    assert f"{path}: 3 pairs, scores -1-17" in caplog.text


def test_builtin_ranges(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lmembed"):
        load_sts("biosses", _data_dir(tmp_path, HEADER + "a\tb\t4.5\n", "sts/biosses.tsv"))
    assert "score 4.5 is outside the expected range 0-4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lmembed"):
        load_sts("stsb", _data_dir(tmp_path, HEADER + "a\tb\t4.5\n"))
    assert "outside" not in caplog.text


# Property tests: whatever the bytes or columns, the loader returns a task or a DataError.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SUFFIXES = st.sampled_from([".tsv", ".csv", ".jsonl", ".tsv.gz"])
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _load_or_data_error(path: Path) -> None:
    try:
        task = load_sts(str(path))
    except DataError:
        return
    assert len(task.sentences1) == len(task.sentences2) == len(task.scores) > 0
    assert np.isfinite(task.scores).all()


@PROPERTY
@given(data=st.binary(max_size=300), suffix=SUFFIXES)
def test_random_bytes_give_a_task_or_data_error(tmp_path_factory, data: bytes, suffix) -> None:
    _load_or_data_error(_own(tmp_path_factory.mktemp("b"), f"f{suffix}", data))


CELLS = st.one_of(
    st.text(max_size=8), st.sampled_from(["1", "4.5", "nan", "-inf", "1e999", "", '"', "\t"])
)
COLUMNS = st.lists(
    st.sampled_from(["sentence1", "sentence2", "score", "other", ""]), min_size=0, max_size=5
)


@PROPERTY
@given(
    columns=COLUMNS,
    rows=st.lists(st.lists(CELLS, max_size=6), max_size=4),
    suffix=st.sampled_from([".tsv", ".csv", ".jsonl"]),
)
def test_random_columns_give_a_task_or_data_error(tmp_path_factory, columns, rows, suffix):
    if suffix == ".jsonl":
        import json

        text = "".join(json.dumps(dict(zip(columns, row, strict=False))) + "\n" for row in rows)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        text = "\n".join(sep.join(line) for line in [columns, *rows]) + "\n"
    _load_or_data_error(_own(tmp_path_factory.mktemp("c"), f"f{suffix}", text))
