"""The BEIR-layout loader: document text, qrels, the registry and strict errors."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest
from retrieval_toy import require_shared, write_beir
from tiny_models import SHARED_DATA

from lmembed.data import DataError
from lmembed.data.retrieval import RETRIEVAL_TASKS, load_retrieval, split_tasks


def test_reads_documents_queries_and_graded_qrels(tmp_path: Path) -> None:
    task = load_retrieval(write_beir(tmp_path / "toy"))
    assert task.name == "toy" and len(task.documents) == 24 and len(task.queries) == 8
    assert task.documents[0] == "doc 0 a man is sitting in the park ."  # title + " " + text
    assert task.documents[1] == "a woman is running on the street ."  # no title
    assert task.qrels["q1"] == {"d3": 2, "d8": 1, "d2": 0}


def test_gzip_files_and_missing_split(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "toy")
    for name in ("corpus.jsonl", "queries.jsonl"):
        path = folder / name
        (folder / f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert len(load_retrieval(folder).documents) == 24
    with pytest.raises(DataError, match="no qrels for split 'dev'; splits found: test"):
        load_retrieval(folder, split="dev")


@pytest.mark.parametrize(
    ("file", "text", "line", "column", "fragment"),
    [
        (
            "corpus.jsonl",
            '{"_id": "d0", "text": "a"}\n{"_id": "d0", "text": "b"}\n',
            2,
            "_id",
            "dup",
        ),
        ("corpus.jsonl", '{"_id": "d0"}\n', 1, "text", "missing or non-string 'text'"),
        ("corpus.jsonl", '{"_id": "d0", "text": "a", "title": 3}\n', 1, "title", "string"),
        ("queries.jsonl", "not json\n", 1, None, "invalid JSON"),
        ("queries.jsonl", '["q"]\n', 1, None, "expected a JSON object"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq0\td0\n", 2, None, "need 3"),
        ("qrels/test.tsv", "q0\td0\t0.5\n", 1, "score", "not an integer"),
        ("qrels/test.tsv", "q0\td1\t0\n", None, None, "no query has a relevant document"),
    ],
)
def test_errors_name_file_line_and_column(tmp_path, file, text, line, column, fragment) -> None:
    folder = write_beir(tmp_path / "toy")
    (folder / file).write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_retrieval(folder)
    assert (info.value.line, info.value.column) == (line, column)
    assert fragment in str(info.value)


def test_unknown_ids_in_qrels_are_skipped_with_a_warning(tmp_path, caplog) -> None:
    folder = write_beir(tmp_path / "toy")
    with (folder / "qrels" / "test.tsv").open("a") as handle:
        handle.write("q0\tnope\t1\nq99\td0\t1\n")
    with caplog.at_level(logging.WARNING, logger="lmembed"):
        task = load_retrieval(folder)
    assert "nope" not in task.qrels["q0"] and "q99" not in task.qrels
    assert "1 judgement(s) name documents" in caplog.text
    assert "1 judgement(s) name queries" in caplog.text


def test_split_tasks(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "toy")
    selection = split_tasks(f"quick,STSB-paraphrase,{folder},stsb")
    assert selection.sts == ["stsb", "biosses", "sts17"]
    assert selection.retrieval == ["stsb-paraphrase", str(folder)]
    assert split_tasks("stsb-paraphrase").sts == []
    with pytest.raises(DataError, match="not a retrieval task name or folder"):
        load_retrieval(tmp_path / "nothing")


def test_shared_stsb_paraphrase_has_canonical_size(caplog) -> None:
    require_shared(RETRIEVAL_TASKS["stsb-paraphrase"].folder)
    with caplog.at_level(logging.WARNING, logger="lmembed"):
        task = load_retrieval("stsb-paraphrase", SHARED_DATA)
    assert (len(task.queries), len(task.documents)) == (309, 10269)
    assert sum(len(j) for j in task.qrels.values()) == 338 and not caplog.records


def test_shared_mini_variant_keeps_every_judged_document(caplog) -> None:
    require_shared(RETRIEVAL_TASKS["stsb-paraphrase"].folder)
    full = load_retrieval("stsb-paraphrase", SHARED_DATA)
    with caplog.at_level(logging.WARNING, logger="lmembed"):
        mini = load_retrieval("stsb-paraphrase-mini", SHARED_DATA)
    assert (len(mini.queries), len(mini.documents)) == (309, 1500) and not caplog.records
    assert mini.qrels == full.qrels and mini.name == "stsb-paraphrase-mini"
    assert set(mini.doc_ids) >= {d for j in full.qrels.values() for d in j}
    assert mini.doc_ids == full.doc_ids[:1500]  # judged documents come first in this file


def test_shrink_keeps_judged_documents_wherever_they_are() -> None:
    from lmembed.data.retrieval import _shrink

    ids = [f"d{i}" for i in range(10)]
    qrels = {"q0": {"d8": 1, "d9": 0}}
    kept, texts = _shrink(ids, [i.upper() for i in ids], qrels, 4)
    assert kept == ["d0", "d1", "d8", "d9"] and texts == ["D0", "D1", "D8", "D9"]
