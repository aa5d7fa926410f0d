"""Smaller vectors: Matryoshka truncation and int8/binary quantisation, sentence-transformers style.

``quantize`` follows ``sentence_transformers.quantization.quantize_embeddings``
exactly (tested for agreement), so vectors written here can be searched next to
ones it wrote:

* ``int8``/``uint8``: each dimension's ``[min, max]`` range (``ranges``, shape
  ``(2, dim)``) is cut into 256 buckets; the ranges come from a calibration
  sample and are saved beside the output so that later batches use the same
  buckets (``save_ranges``/``load_ranges``);
* ``binary``/``ubinary``: one bit per dimension (``value > 0``), packed 8 to a
  byte; ``binary`` stores ``packed - 128`` as int8, ``ubinary`` the bytes;
* ``float16``: a plain cast (not in sentence-transformers).

Similarity on quantised vectors (``similarity``): for int8/uint8 the cosine of
the dequantised vectors (each code replaced by its bucket's centre, so the
score measures what the 8 bits keep; the raw codes are offset by each range's
midpoint and would add their own error), and ``1 - 2 * hamming / D`` for packed
bits, the cosine of the +-1 vectors the bits stand for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import numpy as np

from lmembed.io import atomic_write_npy

Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
CALIBRATED = ("int8", "uint8")
PACKED = ("binary", "ubinary")
RANGES_FILE = "ranges.npy"


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def unit_rows(vectors: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero), so cosine is a dot product; the one
    row-normaliser of lmembed (STS scoring passes float64)."""
    vectors = np.asarray(vectors, dtype=dtype)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def check_dims_option(dims: int | None) -> None:
    """A requested vector size is positive (``None``: the model's); whether it fits the model
    is checked where the vectors are cut (``truncate``), the one place that knows their size."""
    if dims is not None and (type(dims) is not int or dims < 1):
        raise ValueError(f"dims must be a positive integer, got {dims!r}")


def truncate(vectors: np.ndarray, dims: int | None, normalize: bool = False) -> np.ndarray:
    """The first ``dims`` coordinates (Matryoshka), L2-normalised when ``normalize``."""
    if dims is not None:
        if not 0 < dims <= vectors.shape[-1]:
            raise ValueError(f"dims must be in 1..{vectors.shape[-1]}, got {dims}")
        vectors = vectors[..., :dims]
    return unit_rows(vectors) if normalize else np.asarray(vectors, dtype=np.float32)


def calibrate(sample: np.ndarray) -> np.ndarray:
    """int8/uint8 ranges from a calibration sample: per-dimension min and max, ``(2, dim)``."""
    sample = np.asarray(sample, dtype=np.float32)
    if sample.ndim != 2 or len(sample) < 2:
        raise ValueError(
            f"calibration needs at least 2 vectors of shape (n, dim), got {sample.shape}"
        )
    return np.vstack((sample.min(axis=0), sample.max(axis=0))).astype(np.float32)


def quantize(
    vectors: np.ndarray, precision: Precision, ranges: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``vectors`` (float, ``(n, dim)``) at ``precision``, and the int8 ranges used.

    For int8/uint8 without ``ranges`` the ranges are calibrated on ``vectors``
    themselves; pass the returned ranges to every later call. Other precisions
    return ``None`` ranges.
    """
    check_precision(precision)
    vectors = np.asarray(vectors)
    if vectors.dtype.kind != "f":
        raise TypeError(f"quantize takes float vectors, got {vectors.dtype}")
    if precision == "float32":
        return vectors.astype(np.float32), None
    if precision == "float16":
        return vectors.astype(np.float16), None
    if precision in PACKED:
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed if precision == "ubinary" else (packed - 128).astype(np.int8)), None
    ranges = calibrate(vectors) if ranges is None else np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, vectors.shape[-1]):
        raise ValueError(f"ranges have shape {ranges.shape}; expected (2, {vectors.shape[-1]})")
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    codes = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    if precision == "uint8":
        return codes.astype(np.uint8), ranges
    return (codes - 128).astype(np.int8), ranges


def shrink(
    vectors: np.ndarray,
    dims: int | None,
    precision: Precision,
    normalize: bool = False,
    ranges: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``truncate`` then ``quantize``: what ``encode --dims --precision`` stores."""
    return quantize(truncate(vectors, dims, normalize), precision, ranges)


def stored_width(dims: int, precision: str) -> int:
    """Columns of a stored vector: ``dims``, or ``ceil(dims / 8)`` bytes of packed bits."""
    return -(-dims // 8) if precision in PACKED else dims


def bytes_per_vector(dims: int, precision: str) -> int:
    itemsize = {"float32": 4, "float16": 2}.get(precision, 1)
    return stored_width(dims, precision) * itemsize


def dequantize(
    codes: np.ndarray,
    precision: str,
    ranges: np.ndarray | None = None,
    dims: int | None = None,
) -> np.ndarray:
    """Float vectors whose cosine equals ``similarity`` on the quantised ``codes``.

    int8/uint8: bucket centres (needs ``ranges``); packed bits: +-1 per bit (``dims``
    drops the padding bits of the last byte); floats: float32.
    """
    check_precision(precision)
    if precision in PACKED:
        bits = np.unpackbits(_as_bytes(codes, precision), axis=-1, count=dims)
        return bits.astype(np.float32) * 2 - 1
    if precision in CALIBRATED:
        if ranges is None:
            raise ValueError(f"dequantising {precision} needs the calibrated ranges")
        buckets = codes.astype(np.float32) + (128 if precision == "int8" else 0)
        steps = (ranges[1] - ranges[0]) / 255
        return ranges[0] + (buckets + 0.5) * np.where(steps == 0, 1, steps)
    return codes.astype(np.float32)


def hamming(a: np.ndarray, b: np.ndarray, precision: str = "ubinary") -> np.ndarray:
    """Differing bits between rows of packed ``a`` and ``b`` (same shape)."""
    return np.bitwise_count(_as_bytes(a, precision) ^ _as_bytes(b, precision)).sum(axis=-1)


def similarity(
    a: np.ndarray,
    b: np.ndarray,
    precision: str,
    ranges: np.ndarray | None = None,
    dims: int | None = None,
) -> np.ndarray:
    """Row-wise similarity of quantised ``a`` and ``b`` (Hamming-based for packed bits)."""
    if precision in PACKED:
        width = dims if dims is not None else a.shape[-1] * 8
        return 1 - 2 * hamming(a, b, precision) / width
    x = dequantize(a, precision, ranges).astype(np.float64)
    y = dequantize(b, precision, ranges).astype(np.float64)
    norms = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
    return np.einsum("ij,ij->i", x, y) / np.maximum(norms, 1e-12)


def save_ranges(path: str | Path, ranges: np.ndarray) -> Path:
    """Write calibrated ranges as ``.npy`` atomically (read back with ``load_ranges``)."""
    atomic_write_npy(path, np.asarray(ranges, dtype=np.float32))
    return Path(path)


def load_ranges(path: str | Path) -> np.ndarray:
    ranges = np.load(path, allow_pickle=False)
    if ranges.ndim != 2 or ranges.shape[0] != 2:
        raise ValueError(f"{path}: not int8 ranges (shape {ranges.shape}, expected (2, dim))")
    return ranges.astype(np.float32)


def _as_bytes(codes: np.ndarray, precision: str) -> np.ndarray:
    """Packed bits as uint8, undoing ``binary``'s -128 shift."""
    codes = np.asarray(codes)
    if precision == "binary" or codes.dtype == np.int8:
        return (codes.astype(np.int16) + 128).astype(np.uint8)
    return codes.astype(np.uint8, copy=False)
