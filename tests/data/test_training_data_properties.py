"""Property tests: whatever the bytes, JSON or columns, the loader returns training data
or raises ``DataError``, never another exception."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmembed.data import DataError
from lmembed.data.training import DataOptions, load_training_data

NAMES = ["sent0", "sent1", "hard_neg", "anchor", "positive", "negative", "negative_1",
         "query", "pos", "neg", "negatives", "x"]  # fmt: skip
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner),
    max_leaves=8,
)


@contextlib.contextmanager
def _cache_in(folder: str):
    """Gzipped files are decompressed into the cache: keep it in the example's folder."""
    old = os.environ.get("LMEMBED_CACHE")
    os.environ["LMEMBED_CACHE"] = folder
    try:
        yield
    finally:
        if old is None:
            del os.environ["LMEMBED_CACHE"]
        else:
            os.environ["LMEMBED_CACHE"] = old


def _load_or_data_error(name: str, content: bytes, **options) -> None:
    with tempfile.TemporaryDirectory() as folder, _cache_in(folder):
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            data = load_training_data(DataOptions(data=[str(path)], **options))
        except DataError:
            return
        batch = data.batch(0, 3, seed=0)  # what was indexed can be read back
        assert 0 < len(batch) <= 3 and all(isinstance(a, str) for a in batch.anchors)


@SETTINGS
@given(
    st.binary(max_size=300), st.sampled_from(["t.csv", "t.tsv", "t.jsonl", "t.csv.gz", "t.parquet"])
)
def test_random_bytes(content: bytes, name: str) -> None:
    _load_or_data_error(name, content)


@SETTINGS
@given(st.lists(json_values, max_size=5), st.booleans())
def test_random_json_lines(values: list, zipped: bool) -> None:
    content = "".join(json.dumps(v) + "\n" for v in values).encode()
    if zipped:
        _load_or_data_error("t.jsonl.gz", gzip.compress(content))
    else:
        _load_or_data_error("t.jsonl", content)


@SETTINGS
@given(
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True),
    st.lists(st.lists(st.text(max_size=6), min_size=1, max_size=5), max_size=4),
    st.sampled_from([None, "anchor=x,positive=sent1", "negatives=neg*"]),
)
def test_random_columns_csv(header: list[str], rows: list[list[str]], columns) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    _load_or_data_error("t.csv", buffer.getvalue().encode(), columns=columns)


@SETTINGS
@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True), st.data())
def test_random_columns_parquet(header: list[str], draw) -> None:
    cell = st.none() | st.text(max_size=5)
    column = st.lists(cell, min_size=2, max_size=2) | st.lists(
        st.lists(st.text(max_size=4)), min_size=2, max_size=2
    )
    table = pa.table({name: draw.draw(column) for name in header})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    _load_or_data_error("t.parquet", buffer.getvalue())
