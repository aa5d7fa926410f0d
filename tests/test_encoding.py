"""Corpus encoding: shards + manifest equal in-memory encoding; resume after a kill;
2 processes give the single-process bytes; bad input is located."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lmembed.encoding as encoding
from lmembed.data.errors import DataError
from lmembed.encoding import (
    EncodeCorpusOptions,
    encode_corpus,
    finished_entry,
    iter_rows,
    load_corpus,
    read_manifest,
)
from lmembed.model import Embedder
from lmembed.quantization import load_ranges, shrink

DRIVER = Path(__file__).with_name("test_encoding_driver.py")
N_TEXTS, SHARD = 45, 8  # 6 shards, the last one short


def corpus_texts(n: int = N_TEXTS) -> list[str]:
    subjects = ["a man", "a woman", "the dog", "the cat", "two kids"]
    actions = ["runs", "sleeps in the sun", "eats", "plays a long game of chess", "waits"]
    return [f"{subjects[i % 5]} {actions[(i * 3) % 5]} {i}" for i in range(n)]


def write_txt(path: Path, texts: list[str]) -> Path:
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def embedder(tiny_llama):
    return Embedder.from_pretrained(model=str(tiny_llama), dtype="fp32")


def _options(input_path, output, **changes) -> EncodeCorpusOptions:
    changes = {"normalize": False, **changes}  # raw vectors: compared with encode()
    return EncodeCorpusOptions(input=str(input_path), output=str(output), shard_size=SHARD,
                               batch_size=4, **changes)  # fmt: skip


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*")) if p.suffix != ".json"}


def test_txt_corpus_equals_in_memory_encoding(embedder, tmp_path):
    texts = corpus_texts()
    source = write_txt(tmp_path / "corpus.txt", texts[:20] + [" ", ""] + texts[20:])
    manifest_path = encode_corpus(embedder, _options(source, tmp_path / "out"))
    manifest = read_manifest(tmp_path / "out")
    assert manifest_path == tmp_path / "out" / "manifest.json"
    assert manifest["rows"] == N_TEXTS and manifest["dims"] == embedder.dimension
    assert [s["rows"] for s in manifest["shards"]] == [8, 8, 8, 8, 8, 5]
    assert manifest["spec"] == embedder.spec.to_dict() and manifest["ranges"] is None
    ids, vectors = load_corpus(tmp_path / "out")
    np.testing.assert_array_equal(ids, np.arange(N_TEXTS))  # blank lines skipped
    expected = embedder.encode(texts, batch_size=4)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)


def test_jsonl_folder_to_parquet_int8_with_ids_and_saved_ranges(embedder, tmp_path):
    texts = corpus_texts()
    folder = tmp_path / "corpus"
    folder.mkdir()
    for part, rows in (("a.jsonl", range(0, 30)), ("b.jsonl", range(30, N_TEXTS))):
        lines = [json.dumps({"doc": f"d{i}", "body": texts[i]}) for i in rows]
        (folder / part).write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = _options(folder, tmp_path / "out", text_field="body", id_field="doc", dims=16,
                       precision="int8", normalize=True, shard_format="parquet",
                       calibration_size=20)  # fmt: skip
    encode_corpus(embedder, options)
    ids, codes = load_corpus(tmp_path / "out")
    assert list(ids) == [f"d{i}" for i in range(N_TEXTS)]
    assert codes.dtype == np.int8 and codes.shape == (N_TEXTS, 16)
    full = embedder.encode(texts, batch_size=4)
    ranges = load_ranges(tmp_path / "out" / "ranges.npy")
    calibration, _ = shrink(full[:20], 16, "float32", normalize=True)
    np.testing.assert_allclose(ranges, np.vstack([calibration.min(0), calibration.max(0)]),
                               atol=1e-5)  # fmt: skip
    expected, _ = shrink(full, 16, "int8", normalize=True, ranges=ranges)
    assert np.abs(codes.astype(int) - expected).max() <= 1  # a float ulp can move a bucket
    assert (codes == expected).mean() > 0.99
    assert read_manifest(tmp_path / "out")["ranges"] == "ranges.npy"


def test_parquet_input_and_binary_output(embedder, tmp_path):
    texts = corpus_texts(20)
    pq.write_table(pa.table({"text": texts, "n": list(range(20))}), tmp_path / "c.parquet",
                   row_group_size=7)  # fmt: skip
    encode_corpus(embedder, _options(tmp_path / "c.parquet", tmp_path / "out",
                                     precision="ubinary"))  # fmt: skip
    ids, codes = load_corpus(tmp_path / "out")
    expected, _ = shrink(embedder.encode(texts, batch_size=4), None, "ubinary")
    assert codes.shape == (20, embedder.dimension // 8)
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(ids, np.arange(20))


def _run_driver(model, options: EncodeCorpusOptions, *extra: str, torchrun: list[str] = ()):
    command = [*torchrun] if torchrun else [sys.executable]
    command += [str(DRIVER), str(model), json.dumps(asdict(options)), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1])}  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_kill_then_resume_reencodes_only_the_unfinished_shards(
    embedder, tiny_llama, tmp_path, monkeypatch
):
    source = write_txt(tmp_path / "corpus.txt", corpus_texts())
    straight = _options(source, tmp_path / "straight", precision="int8", calibration_size=16)
    encode_corpus(embedder, straight)

    killed = _options(source, tmp_path / "killed", precision="int8", calibration_size=16)
    done = _run_driver(tiny_llama, killed, "--die-at", "2")
    assert done.returncode == -9, done.stderr[-2000:]
    out = tmp_path / "killed"
    assert (out / "shard-00002.npy").is_file()  # data written, entry not: half a shard
    assert finished_entry(out, 2) is None and finished_entry(out, 1) is not None
    assert not (out / "manifest.json").exists()

    encoded = []
    real = encoding.encode_shard
    monkeypatch.setattr(
        encoding,
        "encode_shard",
        lambda e, texts, *a: encoded.append(texts[0]) or real(e, texts, *a),
    )
    encode_corpus(embedder, killed)
    texts = corpus_texts()
    assert encoded == [texts[i * SHARD] for i in range(2, 6)]  # shards 0 and 1 kept
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "straight")
    a, b = read_manifest(out), read_manifest(tmp_path / "straight")
    assert a["shards"] == b["shards"]
    np.testing.assert_array_equal(np.load(out / "ranges.npy"),
                                  np.load(tmp_path / "straight" / "ranges.npy"))  # fmt: skip


def test_a_damaged_shard_is_encoded_again(embedder, tmp_path, monkeypatch):
    source = write_txt(tmp_path / "corpus.txt", corpus_texts())
    options = _options(source, tmp_path / "out")
    encode_corpus(embedder, options)
    before = _shard_bytes(tmp_path / "out")
    shard = tmp_path / "out" / "shard-00003.npy"
    shard.write_bytes(shard.read_bytes()[:-7])  # truncated after its entry was written
    calls = []
    real = encoding.encode_shard
    monkeypatch.setattr(
        encoding, "encode_shard", lambda e, texts, *a: calls.append(1) or real(e, texts, *a)
    )
    encode_corpus(embedder, options)
    assert len(calls) == 1 and _shard_bytes(tmp_path / "out") == before


def test_resume_with_other_settings_is_refused(embedder, tmp_path):
    source = write_txt(tmp_path / "corpus.txt", corpus_texts(10))
    encode_corpus(embedder, _options(source, tmp_path / "out"))
    with pytest.raises(ValueError, match="other settings .*dims.*precision"):
        encode_corpus(embedder, _options(source, tmp_path / "out", dims=8, precision="int8"))
    write_txt(source, corpus_texts(12))  # the input grew: its shards would not line up
    with pytest.raises(ValueError, match=r"other settings \(input files\)"):
        encode_corpus(embedder, _options(source, tmp_path / "out"))
    with pytest.raises(ValueError, match="exceed the embedding size 32"):
        encode_corpus(embedder, _options(source, tmp_path / "other", dims=64))


@pytest.mark.slow
def test_two_processes_write_the_single_process_shards(embedder, tiny_llama, tmp_path):
    source = write_txt(tmp_path / "corpus.txt", corpus_texts())
    single = _options(source, tmp_path / "single", precision="int8", calibration_size=16)
    encode_corpus(embedder, single)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]  # fmt: skip
    double = _options(source, tmp_path / "double", precision="int8", calibration_size=16)
    done = _run_driver(tiny_llama, double, torchrun=torchrun)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_shards(tmp_path / "double", tmp_path / "single", ranks=[0, 1, 0, 1, 0, 1])


def assert_same_shards(folder: Path, reference: Path, ranks: list[int]) -> None:
    """Byte-identical shards and entries, each encoded by the expected rank."""
    assert _shard_bytes(folder) == _shard_bytes(reference)
    shards, expected = read_manifest(folder)["shards"], read_manifest(reference)["shards"]
    assert [s.pop("rank") for s in shards] == ranks
    assert [s.pop("rank") for s in expected] == [0] * len(ranks)
    assert shards == expected


def test_bad_input_names_file_line_and_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c.jsonl, line 2, column 'text': missing field.*body"):
        list(iter_rows(path))
    path.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        list(iter_rows(path))
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match="column 'text': missing column"):
        list(iter_rows(tmp_path / "c.parquet"))
    (tmp_path / "c.csv").write_text("text\na\n", encoding="utf-8")
    with pytest.raises(DataError, match="unknown corpus format"):
        list(iter_rows(tmp_path / "c.csv"))
    write_txt(tmp_path / "t.txt", ["a"])
    with pytest.raises(DataError, match="no fields to take ids from"):
        list(iter_rows(tmp_path / "t.txt", id_field="id"))


def test_output_must_be_a_folder(embedder, tmp_path):
    with pytest.raises(ValueError, match="writes a folder"):
        encode_corpus(embedder, _options(tmp_path / "x.txt", tmp_path / "v.npy"))
