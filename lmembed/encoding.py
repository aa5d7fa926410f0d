"""Corpus-scale encoding: stream texts of any size into fixed-size shards plus a manifest.

``encode_corpus`` reads ``.txt`` (one text a line; blank lines skipped), ``.jsonl`` and
``.parquet`` files (``.txt.gz``/``.jsonl.gz`` too), or every such file in a folder
(sorted by path), as one stream of ``(id, text)`` rows. Rows ``k*S .. (k+1)*S - 1``
form shard ``k`` (``S = shard_size``). Memory holds one shard, whatever the input size.

Each shard is written as data files (atomically: temp file + rename), then its
entry ``shard-K.json`` with the row count and the files' sha256. A shard counts
as finished only when its entry exists and every file matches its hash, so a run
killed at any point resumes by re-encoding the unfinished shards: it loses at
most the shard(s) in progress, and a half-written shard is never taken for a
finished one. ``manifest.json`` (written last, by rank 0) lists every shard with
the embedding spec, dims, precision and int8 ranges.

Under ``torchrun`` rank ``r`` of ``W`` encodes shards ``r, r + W, ...`` (every
rank reads the stream, which costs little next to the model); shards do not
depend on who encoded them, so the output equals a single process's. On
several machines the output folder must be on a shared filesystem.

int8/uint8 ranges are calibrated once on the first ``calibration_size`` texts of
the stream and saved as ``ranges.npy``; every shard, rank and resumed run uses
that file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmembed.data.errors import DataError
from lmembed.data.records import iter_jsonl, iter_lines, iter_parquet
from lmembed.io import atomic_write_bytes, atomic_write_json, npy_bytes
from lmembed.model.spec import Role
from lmembed.options import check_choices, option
from lmembed.quantization import (
    CALIBRATED,
    RANGES_FILE,
    Precision,
    calibrate,
    check_dims_option,
    load_ranges,
    save_ranges,
    shrink,
    stored_width,
    truncate,
)
from lmembed.training.distributed import Distributed, barrier, process_group

logger = logging.getLogger(__name__)

ShardFormat = Literal["npy", "parquet"]
MANIFEST = "manifest.json"
RUN_CONFIG = "encode_config.json"
SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
Row = tuple[Any, str]


@dataclass
class EncodeCorpusOptions:
    """``lmembed encode --output DIR``: a corpus of any size into shards plus a manifest."""

    input: str = option("", "a .txt/.jsonl/.parquet file (.gz for txt/jsonl), or a folder of them")
    output: str = option("", "output folder: shard files, shard-K.json entries, manifest.json")
    text_field: str = option("text", "jsonl/parquet field holding the text")
    id_field: str | None = option(
        None, "jsonl/parquet field holding each row's id (stored as text); default: row number"
    )
    shard_size: int = option(100_000, "rows per shard (the unit of resume and of parallelism)")
    dims: int | None = option(None, "keep the first DIMS coordinates (Matryoshka truncation)")
    precision: Precision = option("float32", "stored precision (sentence-transformers semantics)")
    normalize: bool = option(
        True, "unit-length vectors (after truncation, before quantising), as the server gives"
    )
    shard_format: ShardFormat = option("npy", "npy: vectors + ids .npy; parquet: id + embedding")
    batch_size: int = option(32, "texts per forward pass")
    role: Role | None = option(None, "prompt role: query or document (default: the plain prompt)")
    calibration_size: int = option(10_000, "texts whose vectors calibrate int8/uint8 ranges")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("shard_size", "batch_size", "calibration_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        check_dims_option(self.dims)


# --- reading the corpus -----------------------------------------------------------------


def input_files(path: str | Path) -> list[Path]:
    """The files a corpus is read from, in order: the file, or a folder's files by path."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p))
        if not files:
            raise DataError(path, "no corpus files in this folder", hint=f"expected {SUFFIXES}")
        return files
    if not path.is_file():
        raise DataError(path, "no such file or folder")
    if not _suffix(path):
        raise DataError(path, "unknown corpus format", hint=f"use one of {', '.join(SUFFIXES)}")
    return [path]


def iter_rows(
    path: str | Path, text_field: str = "text", id_field: str | None = None
) -> Iterator[Row]:
    """Stream ``(id, text)`` over the corpus; ids are row numbers unless ``id_field``."""
    files = input_files(path)
    plain = [f for f in files if _suffix(f).startswith(".txt")]
    if id_field is not None and plain:
        raise DataError(
            plain[0], "a .txt file has no fields to take ids from",
            hint="drop --id-field (ids are row numbers) or use jsonl/parquet",
        )  # fmt: skip
    rows = (row for file in files for row in _file_rows(file, text_field, id_field))
    for number, (row_id, text) in enumerate(rows):
        yield (number if id_field is None else str(row_id)), text


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def _file_rows(path: Path, text_field: str, id_field: str | None) -> Iterator[Row]:
    suffix = _suffix(path)
    if suffix == ".parquet":
        columns = [text_field] + ([id_field] if id_field else [])
        for number, record in iter_parquet(path, columns):
            yield _pick(record, path, number, text_field, id_field, "row")
    elif suffix.startswith(".txt"):
        yield from ((None, line) for _, line in iter_lines(path) if line.strip())
    else:
        for number, record in iter_jsonl(path, hint="write one JSON object per line"):
            yield _pick(record, path, number, text_field, id_field, "line")


def _pick(
    record: dict, path: Path, number: int, text_field: str, id_field: str | None, unit: str
) -> Row:
    """The id and text of one record, or a ``DataError`` naming the field and the fix."""
    for field, needed in ((text_field, True), (id_field, id_field is not None)):
        if needed and record.get(field) is None:
            raise DataError(path, "missing field", line=number, column=field, unit=unit,
                            hint=f"fields present: {sorted(record)}; pick one with "
                                 f"--{'text' if field == text_field else 'id'}-field")  # fmt: skip
    text = record[text_field]
    if not isinstance(text, str) or not text.strip():
        raise DataError(path, "text is empty or not a string", line=number, column=text_field,
                        unit=unit, hint="give every row a non-empty text")  # fmt: skip
    return (record[id_field] if id_field is not None else None), text


# --- writing shards ---------------------------------------------------------------------


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shard_files(
    ids: list[Any], codes: np.ndarray, shard_format: ShardFormat, name: str
) -> dict[str, bytes]:
    """File name -> bytes of one shard."""
    id_array = np.asarray(ids, dtype=np.int64 if isinstance(ids[0], int) else str)
    if shard_format == "npy":
        return {f"{name}.npy": npy_bytes(codes), f"{name}.ids.npy": npy_bytes(id_array)}
    flat = pa.array(codes.reshape(-1))
    table = pa.table({
        "id": pa.array(id_array),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, codes.shape[1]),
    })  # fmt: skip
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return {f"{name}.parquet": buffer.getvalue()}


def write_shard(
    folder: Path, index: int, first_row: int, ids: list[Any], codes: np.ndarray,
    shard_format: ShardFormat, rank: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Data files first, then the entry that marks the shard finished; returns the entry.

    ``rank`` (who encoded it) is recorded for the record; it never changes the data.
    """
    name = shard_name(index)
    files = _shard_files(ids, codes, shard_format, name)
    for file, data in files.items():
        atomic_write_bytes(folder / file, data)
    entry = {"index": index, "first_row": first_row, "rows": len(ids), "rank": rank,
             "files": {file: _sha256(data) for file, data in files.items()}}  # fmt: skip
    _write_entry(folder / f"{name}.json", entry)
    return entry


def _write_entry(path: Path, entry: dict[str, Any]) -> None:
    atomic_write_json(path, entry)


def finished_entry(folder: Path, index: int) -> dict[str, Any] | None:
    """The shard's entry if the shard is complete (entry + files matching their sha256)."""
    path = folder / f"{shard_name(index)}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        complete = all(
            _sha256((folder / file).read_bytes()) == digest
            for file, digest in entry["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entry if complete else None


# --- the job ----------------------------------------------------------------------------


def encode_corpus(embedder: Any, options: EncodeCorpusOptions) -> Path:
    """Encode ``options.input`` into shards under ``options.output``; returns the manifest.

    ``embedder`` is an ``Embedder`` (or anything with its ``encode``/``spec``/
    ``dimension``). Under ``torchrun`` every rank calls this with the same options.
    """
    out = Path(options.output)
    if out.suffix == ".npy":
        raise ValueError(f"{out}: encode_corpus writes a folder; .npy output is one array")
    dims = options.dims or embedder.dimension
    if dims > embedder.dimension:
        raise ValueError(f"dims {dims} exceed the embedding size {embedder.dimension}")
    with process_group() as ctx:
        if ctx.device != getattr(embedder, "device", ctx.device):
            embedder.to(ctx.device)
        _start(embedder, options, out, ctx)
        ranges = _shared_ranges(embedder, options, out, ctx)
        encoded = _encode_my_shards(embedder, options, out, ranges, ctx)
        logger.info("rank %d encoded %d shard(s)", ctx.rank, encoded)
        barrier(ctx)
        if ctx.is_main:
            _write_manifest(embedder, options, out, dims)
        barrier(ctx)
    return out / MANIFEST


def _run_config(embedder: Any, options: EncodeCorpusOptions) -> dict[str, Any]:
    """What decides the shards' bytes; a resumed run must match it."""
    config = asdict(options)
    for key in ("output", "batch_size"):
        config.pop(key)
    config["input"] = str(Path(options.input).resolve())
    files = {str(f): f.stat().st_size for f in input_files(options.input)}
    return {"options": config, "spec": embedder.spec.to_dict(), "input_bytes": files}


def _start(embedder: Any, options: EncodeCorpusOptions, out: Path, ctx: Distributed) -> None:
    """Record the run's settings, or check that a resumed run uses the same ones."""
    config = _run_config(embedder, options)
    path = out / RUN_CONFIG
    if path.is_file():  # every rank checks, so all of them stop on a mismatch
        changed = _differences(json.loads(path.read_text(encoding="utf-8")), config)
        if changed:
            raise ValueError(
                f"{out} holds a run with other settings ({', '.join(changed)}); resume "
                "with the same ones, or pick another --output"
            )
    barrier(ctx)
    if ctx.is_main and not path.is_file():
        atomic_write_json(path, config)
    barrier(ctx)


def _differences(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Names of the settings that differ (``spec.*`` for the embedding, ``input files``)."""

    def flat(run: dict[str, Any]) -> dict[str, Any]:
        spec = {f"spec.{k}": v for k, v in run["spec"].items()}
        return {**run["options"], **spec, "input files": run.get("input_bytes")}

    old, new = flat(saved), flat(config)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _shared_ranges(
    embedder: Any, options: EncodeCorpusOptions, out: Path, ctx: Distributed
) -> np.ndarray | None:
    """int8 ranges: from ``ranges.npy``, or calibrated by rank 0 and saved there first."""
    if options.precision not in CALIBRATED:
        return None
    path = out / RANGES_FILE
    if ctx.is_main and not path.is_file():
        rows = iter_rows(options.input, options.text_field, options.id_field)
        texts = [text for _, text in islice(rows, options.calibration_size)]
        if len(texts) < 2:
            raise DataError(options.input, "int8 calibration needs at least 2 texts")
        vectors = embedder.encode(texts, batch_size=options.batch_size, show_progress=False,
                                  role=options.role)  # fmt: skip
        save_ranges(path, calibrate(truncate(vectors, options.dims, options.normalize)))
    barrier(ctx)
    return load_ranges(path)


def _shards(options: EncodeCorpusOptions) -> Iterator[tuple[int, int, Iterator[Row]]]:
    """(index, first row, rows) per shard; a shard's rows must be consumed or skipped."""
    rows = iter_rows(options.input, options.text_field, options.id_field)
    index = 0
    while True:
        chunk = list(islice(rows, options.shard_size))
        if not chunk:
            return
        yield index, index * options.shard_size, iter(chunk)
        index += 1


def _encode_my_shards(
    embedder: Any, options: EncodeCorpusOptions, out: Path, ranges: np.ndarray | None,
    ctx: Distributed,
) -> int:  # fmt: skip
    """Encode this rank's unfinished shards; returns how many were encoded."""
    encoded = 0
    total = 0
    for index, first_row, rows in _shards(options):
        total += 1
        if index % ctx.world_size != ctx.rank or finished_entry(out, index) is not None:
            continue
        ids, texts = zip(*rows, strict=True)
        codes = encode_shard(embedder, list(texts), options, ranges)
        write_shard(out, index, first_row, list(ids), codes, options.shard_format, ctx.rank)
        encoded += 1
        logger.info("shard %d written (%d rows)", index, len(ids))
    if total == 0:
        raise DataError(options.input, "no texts to encode", hint="check --text-field")
    return encoded


def encode_shard(
    embedder: Any, texts: list[str], options: EncodeCorpusOptions, ranges: np.ndarray | None
) -> np.ndarray:
    """One shard's stored vectors: encode, truncate, normalise, quantise."""
    vectors = embedder.encode(texts, batch_size=options.batch_size, show_progress=False,
                              role=options.role)  # fmt: skip
    codes, _ = shrink(vectors, options.dims, options.precision, options.normalize, ranges)
    return codes


def _write_manifest(embedder: Any, options: EncodeCorpusOptions, out: Path, dims: int) -> None:
    entries = []
    index = 0
    while (out / f"{shard_name(index)}.json").is_file():
        entry = finished_entry(out, index)
        if entry is None:
            raise RuntimeError(f"{out}: shard {index} is incomplete after encoding; rerun")
        entries.append(entry)
        index += 1
    calibrated = options.precision in CALIBRATED
    atomic_write_json(out / MANIFEST, {
        "format_version": 1,
        "spec": embedder.spec.to_dict(),
        "options": _run_config(embedder, options)["options"],
        "rows": sum(e["rows"] for e in entries),
        "dims": dims,
        "stored_width": stored_width(dims, options.precision),
        "precision": options.precision,
        "normalized": options.normalize,
        "ranges": RANGES_FILE if calibrated else None,
        "shard_format": options.shard_format,
        "shards": entries,
    })  # fmt: skip


# --- reading the output -----------------------------------------------------------------


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST}; the encoding has not finished")
    return json.loads(path.read_text(encoding="utf-8"))


def iter_shards(folder: str | Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, vectors)`` of each shard in order, as stored (quantised codes stay codes)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for entry in manifest["shards"]:
        name = shard_name(entry["index"])
        if manifest["shard_format"] == "npy":
            yield np.load(folder / f"{name}.ids.npy"), np.load(folder / f"{name}.npy")
            continue
        table = pq.read_table(folder / f"{name}.parquet")
        embedding = table.column("embedding").combine_chunks()
        width = embedding.type.list_size
        vectors = embedding.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        yield table.column("id").to_numpy(), vectors


def load_corpus(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All ids and vectors of an encoded corpus (for corpora that fit in memory)."""
    parts = list(iter_shards(folder))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
