from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import shared_data_dir as find_shared_data

from lmembed.data import DataError, Triplets, load_triplets
from lmembed.data.hub import looks_like_hub_id

ROWS = [
    ("A man plays a guitar . ", "A man plays music.", "Nobody plays anything."),
    ('She said "hi", then left', "She greeted someone,\nthen left", "She stayed silent"),
    ("Ünïcødé ✓", "unicode text", "plain"),
]
HEADER = "sent0,sent1,hard_neg\n"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gzipped files are decompressed into the cache: keep it in the test's folder."""
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shared_data_dir() -> Path:
    return find_shared_data()


def _csv_text(rows=ROWS) -> str:
    def quote(cell: str) -> str:
        return '"' + cell.replace('"', '""') + '"' if any(c in cell for c in ',"\n') else cell

    return HEADER + "".join(",".join(quote(c) for c in row) + "\n" for row in rows)


def _write(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    return path


def _jsonl_text(rows=ROWS) -> str:
    keys = ("sent0", "sent1", "hard_neg")
    return "".join(
        json.dumps(dict(zip(keys, row, strict=True)), ensure_ascii=False) + "\n" for row in rows
    )


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_csv_round_trip(tmp_path: Path, name: str) -> None:
    triplets = load_triplets(_write(tmp_path / name, _csv_text()))
    assert len(triplets) == 3
    assert [triplets[i] for i in range(3)] == ROWS  # quotes, commas, newlines, spaces kept


def test_jsonl_round_trip(tmp_path: Path) -> None:
    triplets = load_triplets(_write(tmp_path / "t.jsonl", _jsonl_text() + "\n"))
    assert [triplets[i] for i in range(len(triplets))] == ROWS


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    columns = dict(
        zip(("sent0", "sent1", "hard_neg"), map(list, zip(*ROWS, strict=True)), strict=True)
    )
    pq.write_table(pa.table({**columns, "extra": [1, 2, 3]}), path)
    triplets = load_triplets(path)
    assert [triplets[i] for i in range(len(triplets))] == ROWS


def test_limit_and_extra_columns(tmp_path: Path) -> None:
    text = "id,sent0,sent1,hard_neg\n" + "".join(f"{i},a{i},b{i},c{i}\n" for i in range(10))
    triplets = load_triplets(_write(tmp_path / "t.csv", text), limit=4)
    assert triplets == Triplets(
        ["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"], ["c0", "c1", "c2", "c3"]
    )
    with pytest.raises(ValueError, match="limit"):
        load_triplets(tmp_path / "t.csv", limit=0)


def test_blank_lines_are_counted_and_logged(tmp_path: Path, caplog) -> None:
    path = _write(tmp_path / "t.jsonl", _jsonl_text()[:-1] + "\n\n\n" + _jsonl_text())
    with caplog.at_level(logging.INFO, logger="lmembed"):
        assert len(load_triplets(path)) == 6
    assert "skipped 2 blank line(s)" in caplog.text


def _error(path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_triplets(path)
    return info.value


def test_missing_column_lists_missing_and_found(tmp_path: Path) -> None:
    err = _error(_write(tmp_path / "t.csv", "sent0,sent1,negative\na,b,c\n"))
    assert (err.line, err.column) == (1, None)
    assert "hard_neg" in str(err) and "found: sent0, sent1, negative" in str(err)
    assert str(err).startswith(f"{tmp_path / 't.csv'}, line 1: missing column(s) hard_neg")


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_empty_cell_names_file_line_column(tmp_path: Path, name: str) -> None:
    # The quoted multi-line cell makes physical line numbers differ from row numbers.
    text = HEADER + 'a,"two\nlines",c\nd,e,f\ng,   ,i\n'
    err = _error(_write(tmp_path / name, text))
    assert (err.line, err.column) == (5, "sent1")
    assert str(err).startswith(f"{tmp_path / name}, line 5, column 'sent1': empty cell")
    assert "fill in" in str(err)


def test_empty_cell_in_jsonl_and_parquet(tmp_path: Path) -> None:
    err = _error(
        _write(
            tmp_path / "t.jsonl",
            '{"sent0": "a", "sent1": "b", "hard_neg": "c"}\n'
            '{"sent0": "a", "sent1": "b", "hard_neg": null}\n',
        )
    )
    assert (err.line, err.column) == (2, "hard_neg")
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"sent0": ["a", ""], "sent1": ["b", "b"], "hard_neg": ["c", "c"]}), path
    )
    err = _error(path)
    assert (err.line, err.column, err.unit) == (2, "sent0", "row")
    assert "row 2, column 'sent0': empty cell" in str(err)


def test_wrong_field_count(tmp_path: Path) -> None:
    err = _error(_write(tmp_path / "t.csv", HEADER + "a,b,c\nd,e,f,g\n"))
    assert err.line == 3 and "4 fields, but the header has 3" in str(err)


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.jsonl"])
def test_bad_utf8_names_line(tmp_path: Path, name: str) -> None:
    good = _csv_text() if name.startswith("t.csv") else _jsonl_text()
    data = good.encode() + b"caf\xe9,b,c\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    err = _error(path)
    assert err.line == good.count("\n") + 1
    assert "not valid UTF-8" in str(err) and "UTF-8" in err.hint


@pytest.mark.parametrize("content", [b"", b"  \n\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    assert "file is empty" in str(_error(path))


def test_header_only_has_no_rows(tmp_path: Path) -> None:
    assert "no data rows" in str(_error(_write(tmp_path / "t.csv", HEADER)))


def test_bad_json_line(tmp_path: Path) -> None:
    text = _jsonl_text() + '{"sent0": "a", "sent1": \n'
    err = _error(_write(tmp_path / "t.jsonl", text))
    assert err.line == 4 and "not valid JSON" in str(err)
    err = _error(_write(tmp_path / "u.jsonl", '["a", "b", "c"]\n'))
    assert err.line == 1 and "expected a JSON object" in str(err)


def test_jsonl_missing_key_names_line(tmp_path: Path) -> None:
    err = _error(_write(tmp_path / "t.jsonl", _jsonl_text() + '{"sent0": "a", "sent1": "b"}\n'))
    assert err.line == 4 and "missing column(s) hard_neg" in str(err)


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    err = _error(tmp_path / "nope.csv")
    assert str(tmp_path / "nope.csv") in str(err) and "file not found" in str(err)
    assert "unsupported file type" in str(_error(_write(tmp_path / "t.txt", "x")))


def test_hub_id_detection(tmp_path: Path) -> None:
    assert looks_like_hub_id("princeton-nlp/datasets-for-simcse")
    assert not looks_like_hub_id("data/nli.csv")  # a missing local file, not a hub id
    assert not looks_like_hub_id("just-a-name")
    (tmp_path / "owner").mkdir()
    assert not looks_like_hub_id(tmp_path / "owner")


def test_shared_snli_file(shared_data_dir: Path) -> None:
    triplets = load_triplets(shared_data_dir / "nli" / "snli_devtest_triplets_tok.csv.gz")
    assert len(triplets) == 5864
    assert triplets[0][0] == "Two women are embracing while holding to go packages . "


def test_hub_source_uses_simcse_file(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_rows(source):
        seen.append(source)
        return [
            {"sent0": "a", "sent1": "b", "hard_neg": "c"},
            {"sent0": "d", "sent1": "", "hard_neg": "f"},
        ]

    monkeypatch.setattr("lmembed.data.formats.load_hub_rows", fake_rows)
    assert load_triplets("princeton-nlp/datasets-for-simcse", limit=1)[0] == ("a", "b", "c")
    assert seen[0].data_files == "nli_for_simcse.csv" and seen[0].split == "train"
    with pytest.raises(
        DataError, match="princeton-nlp/datasets-for-simcse, row 2, column 'sent1': empty"
    ):
        load_triplets("princeton-nlp/datasets-for-simcse")
