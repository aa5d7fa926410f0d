"""The shared record readers: lines, tab- and comma-separated rows, JSON lines and parquet
rows, numbered from 1."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmembed.data.errors import DataError
from lmembed.data.records import iter_jsonl, iter_lines, iter_parquet, numbered_lines

JSONL = b'\xef\xbb\xbf{"a": 1}\r\n\n   \n{"a": "x\\u2028y"}\n{"a": [3]}'


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_jsonl_rows_skip_blank_lines_keep_numbers_and_drop_bom(tmp_path: Path, name) -> None:
    rows = list(iter_jsonl(_write(tmp_path / name, JSONL)))
    assert rows == [(1, {"a": 1}), (4, {"a": "x\u2028y"}), (5, {"a": [3]})]


@pytest.mark.parametrize("name", ["r.txt", "r.txt.gz"])
def test_lines_keep_blank_lines_and_drop_line_ends(tmp_path: Path, name) -> None:
    path = _write(tmp_path / name, b"\xef\xbb\xbfone\r\n\n two \rx\nlast")
    assert list(iter_lines(path)) == [(1, "one"), (2, ""), (3, " two \rx"), (4, "last")]


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_bad_json_names_file_and_line(tmp_path: Path, name) -> None:
    path = _write(tmp_path / name, b'{"a": 1}\n\n{"a": \n{"a": 2}\n')
    with pytest.raises(DataError) as info:
        list(iter_jsonl(path))
    assert info.value.line == 3 and info.value.path == str(path)
    assert "not valid JSON (Expecting value at character 7)" in str(info.value)


def test_non_object_line_names_its_type(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl", b'{"a": 1}\n["a", "b"]\n')
    with pytest.raises(DataError) as info:
        list(iter_jsonl(path, example='{"a": ...}'))
    assert info.value.line == 2 and "expected a JSON object, got list" in str(info.value)
    assert info.value.hint == 'write objects like {"a": ...}'


def test_too_deep_json_is_a_data_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl", b"[" * 100_000 + b"\n")
    with pytest.raises(DataError, match="line 1: not valid JSON"):
        list(iter_jsonl(path))


def test_bad_utf8_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl.gz", b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        list(iter_jsonl(path))
    assert info.value.line == 2


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf \n\t\n"])
def test_blank_file_is_empty_only_when_content_is_expected(tmp_path: Path, data) -> None:
    path = _write(tmp_path / "r.jsonl.gz", data)
    assert list(iter_jsonl(path)) == []
    with pytest.raises(DataError, match="file is empty; expected one object") as info:
        list(iter_jsonl(path, expected="one object"))
    assert info.value.line is None


def test_leading_blank_lines_are_yielded_once_content_follows(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.txt", b"\n \nx\n")
    assert list(iter_lines(path, expected="text")) == [(1, ""), (2, " "), (3, "x")]


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    whole = gzip.compress(b'{"a": 1}\n' * 1000)
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    for name in ("bad.jsonl.gz", "cut.jsonl.gz"):
        with pytest.raises(DataError, match="not a valid gzip file"):
            list(iter_jsonl(tmp_path / name))


def test_numbered_lines_give_offsets_to_seek_back_to(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.tsv", b"\xef\xbb\xbfh\nab\r\n\nc")
    with path.open("rb") as handle:
        lines = list(numbered_lines(handle, path))
        assert lines == [(1, 5, "h\n"), (2, 9, "ab\r\n"), (3, 10, "\n"), (4, 11, "c")]
        handle.seek(lines[0][1])
        assert list(numbered_lines(handle, path, first=2))[0] == (2, 9, "ab\r\n")


def test_parquet_rows_are_numbered_across_batches(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3, 4, 5], "b": list("vwxyz")}), path, row_group_size=2)
    rows = list(iter_parquet(path, batch_size=2))
    assert rows == [(i + 1, {"a": i + 1, "b": "vwxyz"[i]}) for i in range(5)]
    assert list(iter_parquet(path, ["b"]))[-1] == (5, {"b": "z"})


def test_parquet_missing_column_and_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    missing = r"r\.parquet, column 'text': missing column; columns present: \['a'\]"
    with pytest.raises(DataError, match=missing):
        list(iter_parquet(path, ["a", "text"]))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        list(iter_parquet(tmp_path / "bad.parquet"))


def test_delimited_rows_carry_the_line_they_start_on(tmp_path):
    from lmembed.data.records import iter_csv, iter_tsv

    path = tmp_path / "rows.csv"
    path.write_text('a,b\n"one\ntwo",3\n\n4,5\n', encoding="utf-8")
    assert list(iter_csv(path, expected="rows")) == [
        (1, ["a", "b"]), (2, ["one\ntwo", "3"]), (4, []), (5, ["4", "5"])
    ]  # fmt: skip
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("\ufeffa\tb\r\n\nc\td\n", encoding="utf-8")
    assert list(iter_tsv(tsv, expected="rows")) == [(1, ["a", "b"]), (2, [""]), (3, ["c", "d"])]


def test_malformed_csv_names_its_file_and_line(tmp_path):
    from lmembed.data.records import iter_csv

    path = tmp_path / "bad.csv"
    path.write_text('a,b\n1,2\n"open,3\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv.*line 3.*malformed CSV"):
        list(iter_csv(path, expected="rows"))
