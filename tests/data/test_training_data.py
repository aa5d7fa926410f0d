"""Layouts, formats and the column mapping of the training-data loader."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmembed.data import DataError
from lmembed.data.training import DataOptions, TrainingData, load_training_data

ROWS = [
    {"q": f"question {i}, with comma", "a": f"answer {i}\nsecond line", "n1": f"wrong {i}",
     "n2": f"other {i}", "n3": f"third {i}"}
    for i in range(7)
]  # fmt: skip


def _all(data: TrainingData, batch_size: int = 4) -> list[tuple[str, str, tuple[str, ...]]]:
    """Every example of one epoch (single dataset), sorted, read through ``batch``."""
    out = []
    for step in range(data.steps_per_epoch(batch_size)):
        b = data.batch(step, batch_size, seed=3)
        out += [
            (a, p, tuple(n)) for a, p, n in zip(b.anchors, b.positives, b.negatives, strict=True)
        ]
    return sorted(out)


def _expected(k: int) -> list[tuple[str, str, tuple[str, ...]]]:
    cols = ("n1", "n2", "n3")[:k]
    return sorted((r["q"], r["a"], tuple(r[c] for c in cols)) for r in ROWS)


def _csv(path: Path, header: list[str], keys: list[str], sep: str = ",") -> Path:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=sep, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([r[k] for k in keys] for r in ROWS)
    data = buffer.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gzipped files are decompressed into the cache: keep it in the test's folder."""
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path / "cache"))


def _load(*data: Path | str, **options) -> TrainingData:
    return load_training_data(DataOptions(data=[str(d) for d in data], **options))


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_simcse_triplets_csv(tmp_path: Path, name: str) -> None:
    data = _load(_csv(tmp_path / name, ["sent0", "sent1", "hard_neg"], ["q", "a", "n1"]))
    assert len(data) == 7 and _all(data) == _expected(1)
    assert data.datasets[0].parts[0].layout.name == "SimCSE"


def test_pairs_have_no_negatives(tmp_path: Path) -> None:
    data = _load(_csv(tmp_path / "p.csv", ["anchor", "positive"], ["q", "a"]))
    batch = data.batch(0, 4, seed=0)
    assert batch.negatives == [[], [], [], []] and batch.negatives_per_anchor == 0
    assert _all(data) == _expected(0)


@pytest.mark.parametrize("name", ["st.jsonl", "st.jsonl.gz"])
def test_sentence_transformers_k_negatives(tmp_path: Path, name: str) -> None:
    rows = [{"anchor": r["q"], "positive": r["a"], "negative_1": r["n1"], "negative_2": r["n2"],
             "negative_10": r["n3"]} for r in ROWS]  # fmt: skip
    data = _load(_jsonl(tmp_path / name, rows))
    assert data.datasets[0].negatives == 3
    assert _all(data) == _expected(3)  # negative_10 sorts after negative_2


def test_flag_embedding_lists(tmp_path: Path, caplog) -> None:
    rows = [{"query": r["q"], "pos": [r["a"], "extra"], "neg": [r["n1"], r["n2"], r["n3"]]}
            for r in ROWS]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="lmembed"):
        data = _load(_jsonl(tmp_path / "f.jsonl", rows))
    assert "7 extra positive(s) unused" in caplog.text
    assert _all(data) == _expected(3)
    two = _load(tmp_path / "f.jsonl", negatives_per_anchor=2)
    batch = two.batch(1, 4, seed=5)
    assert all(len(n) == 2 and len(set(n)) == 2 for n in batch.negatives)
    assert batch == two.batch(1, 4, seed=5)  # the draw is a function of (seed, step)
    picks = {tuple(n) for s in range(20) for n in two.batch(s, 4, seed=5).negatives}
    assert len({p[0].split()[0] + p[1].split()[0] for p in picks}) > 1  # not always the same two


def test_rows_with_fewer_negatives(tmp_path: Path, caplog) -> None:
    rows = [{"query": r["q"], "positive": r["a"], "negatives": [r["n1"], r["n2"]][: 1 + i % 2]}
            for i, r in enumerate(ROWS)]  # fmt: skip
    path = _jsonl(tmp_path / "q.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="lmembed"):
        assert _load(path).datasets[0].negatives == 1  # the fewest any row has
    assert "rows have 1-2 hard negatives; each anchor uses 1" in caplog.text
    with pytest.raises(DataError, match=r"line 1: 1 negative\(s\), fewer than"):
        _load(path, negatives_per_anchor=2)
    assert _load(path, negatives_per_anchor=0).batch(0, 4, 0).negatives_per_anchor == 0


def test_parquet_with_list_cells_and_small_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    table = pa.table({"query": [r["q"] for r in ROWS], "positive": [r["a"] for r in ROWS],
                      "negatives": [[r["n1"], r["n2"]] for r in ROWS],
                      "id": list(range(7))})  # fmt: skip
    pq.write_table(table, path, row_group_size=3)
    assert _all(_load(path)) == _expected(2)


def test_tsv_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    _csv(folder / "a.tsv", ["sent0", "sent1", "hard_neg"], ["q", "n1", "n2"], sep="\t")
    _jsonl(folder / "b.jsonl", [{"sent0": "x", "sent1": "y", "hard_neg": "z"}])
    (folder / "notes.txt").write_text("ignored")
    data = _load(folder)
    assert len(data) == 8 and data.names == ["mixed"]
    assert ("x", "y", ("z",)) in _all(data)


def test_tsv_keeps_quotes(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text('anchor\tpositive\n"quoted" text\tit said "hi"\n')
    assert _all(_load(path)) == [('"quoted" text', 'it said "hi"', ())]


def test_column_mapping(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", ["question", "answer", "neg_a", "neg_b", "id"],
                ["q", "a", "n1", "n2", "n3"])  # fmt: skip
    data = _load(path, columns="anchor=question,positive=answer,negatives=neg_*")
    assert _all(data) == _expected(2)
    pairs = _load(path, columns="anchor=question, positive=answer, negatives=")
    assert pairs.datasets[0].negatives == 0


def test_mapping_overrides_a_detected_layout(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", ["sent0", "sent1", "hard_neg", "other"], ["q", "a", "n1", "n2"])
    data = _load(path, columns="negatives=other")
    assert _all(data) == sorted((r["q"], r["a"], (r["n2"],)) for r in ROWS)


def test_unknown_layout_lists_columns_and_flag(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", ["question", "answer"], ["q", "a"])
    with pytest.raises(DataError) as info:
        _load(path)
    text = str(info.value)
    assert text.startswith(f"{path}, line 1: unknown layout")
    assert "found: question, answer" in text and "--columns anchor=" in text


def test_ambiguous_layout(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "a.jsonl", [{"sent0": "a", "sent1": "b", "anchor": "c", "positive": "d"}]
    )
    with pytest.raises(
        DataError, match="ambiguous layout: the columns fit both SimCSE and sentence"
    ):
        _load(path)
    assert _all(_load(path, columns="anchor=anchor,positive=positive")) == [("c", "d", ())]


def test_mapping_to_missing_column(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", ["question", "answer"], ["q", "a"])
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) neg_\* \(found: question"):
        _load(path, columns="anchor=question,positive=answer,negatives=neg_*")


@pytest.mark.parametrize(
    "options",
    [{"columns": "anchor"}, {"columns": "query=q"}, {"mixing": "random"},
     {"mixing": "weights=a:x"}, {"mixing": "weights=a:0"}, {"limit": 0},
     {"negatives_per_anchor": -1}],
)  # fmt: skip
def test_bad_options(options: dict) -> None:
    with pytest.raises(ValueError):
        DataOptions(data=["x.csv"], **options)


def test_bad_rows_name_file_line_column(tmp_path: Path) -> None:
    rows = [
        {"query": "a", "pos": ["b"], "neg": ["c"]},
        {"query": "a", "pos": ["b"], "neg": ["c", 3]},
    ]
    path = _jsonl(tmp_path / "f.jsonl", rows)
    with pytest.raises(
        DataError, match=r"f.jsonl, line 2, column 'neg\[1\]': expected text, got int"
    ):
        _load(path)
    path = _jsonl(tmp_path / "g.jsonl", [{"query": "a", "pos": [], "neg": []}])
    with pytest.raises(DataError, match=r"line 1, column 'pos': empty list"):
        _load(path)


def test_limit_is_per_dataset_and_a_yaml_string_is_one_item(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", ["sent0", "sent1"], ["q", "a"])
    assert DataOptions(data=str(path)).data == [str(path)]
    assert len(_load(path, tmp_path / "c.csv", limit=3)) == 6


def test_hub_dataset_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"anchor": f"a{i}", "positive": f"p{i}"} for i in range(5)]
    monkeypatch.setattr("lmembed.data.formats.load_hub_rows", lambda source: rows)
    data = _load("owner/pairs")
    assert data.names == ["owner/pairs"] and len(data) == 5
    assert sorted(data.batch(0, 5, seed=1).anchors) == [f"a{i}" for i in range(5)]


def test_options_build_from_flat_values(tmp_path: Path) -> None:
    from lmembed.options import build, flat_fields

    names = [f.name for f in flat_fields(DataOptions)]
    assert names == ["data", "columns", "mixing", "negatives_per_anchor", "dedupe", "limit"]
    options = build(DataOptions, {"data": "a.csv", "negatives-per-anchor": 2}, "train.yaml")
    assert options.data == ["a.csv"] and options.negatives_per_anchor == 2
    yaml_mapping = {"anchor": "question", "positive": "answer", "negatives": None}
    assert DataOptions(columns=yaml_mapping).columns == "anchor=question,positive=answer,negatives="


def test_limit_stops_before_later_rows_and_files(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"anchor": "a", "positive": "b"}\n{"anchor": \n')
    (folder / "b.jsonl").write_text("not json\n")
    assert len(_load(folder, limit=1)) == 1
    with pytest.raises(DataError, match="a.jsonl, line 2: not valid JSON"):
        _load(folder)


def test_file_edited_during_training_is_an_error(tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", ["sent0", "sent1"], ["q", "a"])
    data = _load(path)
    with path.open("a") as handle:
        handle.write("late,row\n")
    with pytest.raises(DataError, match="file changed after it was indexed"):
        data.batch(0, 4, seed=0)
