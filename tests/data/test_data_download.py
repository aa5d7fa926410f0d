from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmembed.data import DataError, download, load_sts, load_triplets, write_sts_tsv
from lmembed.data.download import DOWNLOAD_TASKS, HUB_STS, write_triplets_csv
from lmembed.data.hub import HubSource
from lmembed.data.sts import ALL_TASKS

# Rows as MTEB's hub datasets give them: score is float32 in some of them.
MTEB_ROWS = {
    "sentence1": ['He said "no" ', "tab\there", "x"],
    "sentence2": ["line\nbreak", "y", " z"],
    "score": [2.4, 5.0, 0.0],
}


def _mteb_dataset() -> datasets.Dataset:
    features = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "score": datasets.Value("float32"),
        }
    )
    return datasets.Dataset.from_dict(MTEB_ROWS, features=features)


def test_write_sts_tsv_round_trips_and_cleans_breaks(tmp_path: Path, caplog) -> None:
    path = tmp_path / "sts" / "stsb_test.tsv"
    with caplog.at_level(logging.WARNING, logger="lmembed"):
        assert write_sts_tsv(_mteb_dataset(), path) == 3
    assert "in 2 sentence(s)" in caplog.text
    assert path.read_text().splitlines()[1] == 'He said "no" \tline break\t2.4'
    task = load_sts("stsb", tmp_path)
    assert task.sentences1 == ['He said "no" ', "tab here", "x"]
    assert task.sentences2 == ["line break", "y", " z"]
    np.testing.assert_array_equal(task.scores, [2.4, 5.0, 0.0])


def test_write_sts_tsv_from_parquet_fixture(tmp_path: Path) -> None:
    parquet = tmp_path / "test.parquet"
    pq.write_table(pa.table(MTEB_ROWS), parquet)
    rows = datasets.load_dataset("parquet", data_files=str(parquet), split="train")
    write_sts_tsv(rows, tmp_path / "sts/biosses.tsv")
    assert load_sts("biosses", tmp_path).sentences1[0] == 'He said "no" '


def test_write_sts_tsv_rejects_bad_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"row 2, column 'score': score 'n/a' is not a number"):
        write_sts_tsv(
            [
                {"sentence1": "a", "sentence2": "b", "score": 1},
                {"sentence1": "a", "sentence2": "b", "score": "n/a"},
            ],
            tmp_path / "s.tsv",
        )
    with pytest.raises(DataError, match=r"row 1, column 'sentence2'"):
        write_sts_tsv([{"sentence1": "a", "score": 1}], tmp_path / "s.tsv")
    assert not (tmp_path / "s.tsv").exists()  # nothing half-written


def test_write_triplets_csv_round_trips(tmp_path: Path) -> None:
    rows = [{"sent0": 'a, "b"', "sent1": "two\nlines", "hard_neg": "NA"}]
    path = tmp_path / "nli.csv"
    assert write_triplets_csv(rows, path) == 1
    assert load_triplets(path)[0] == ('a, "b"', "two\nlines", "NA")


def test_download_with_fake_loader(tmp_path: Path) -> None:
    calls: list[HubSource] = []

    def loader(source: HubSource):
        calls.append(source)
        if source.data_files:
            return [{"sent0": "a", "sent1": "b", "hard_neg": "c"}]
        return _mteb_dataset()

    written = download(tmp_path, tasks=["stsb", "sts17"], loader=loader)
    assert written == {
        "stsb": tmp_path / "sts/stsb_test.tsv",
        "sts17": tmp_path / "sts/sts17_en-en.tsv",
        "nli": tmp_path / "nli/nli_for_simcse.csv",
    }
    assert calls[1] == HubSource("mteb/sts17-crosslingual-sts", config="en-en", split="test")
    assert calls[2].path == "princeton-nlp/datasets-for-simcse"
    assert calls[2].data_files == "nli_for_simcse.csv"
    assert len(load_sts("sts17", tmp_path)) == 3 and len(load_triplets(written["nli"])) == 1

    download(tmp_path, tasks=["stsb"], loader=loader)  # existing files are kept
    assert len(calls) == 3
    download(tmp_path, tasks=["stsb"], nli=False, overwrite=True, loader=loader)
    assert len(calls) == 4


def test_download_registry() -> None:
    assert set(DOWNLOAD_TASKS) == set(ALL_TASKS) | {"stsb-dev"} == set(HUB_STS)
    assert HUB_STS["stsb-dev"].split == "validation"
    with pytest.raises(ValueError, match="no hub source for task.*sickr-test"):
        download("unused", tasks=["sickr-test"], loader=lambda s: [])
