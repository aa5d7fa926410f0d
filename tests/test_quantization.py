"""Quantisation: agreement with sentence-transformers, calibration reuse, round trips."""

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from lmembed.quantization import (
    bytes_per_vector,
    calibrate,
    dequantize,
    hamming,
    load_ranges,
    quantize,
    save_ranges,
    similarity,
    truncate,
)


def _vectors(n=200, dim=20, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_agrees_with_sentence_transformers(precision):
    vectors = _vectors()
    ours, _ = quantize(vectors, precision)
    theirs = quantize_embeddings(vectors, precision)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_calibrated_ranges_agree_with_sentence_transformers_calibration(precision):
    sample, later = _vectors(seed=1), _vectors(n=30, seed=2) * 1.5  # later values overflow
    ranges = calibrate(sample)
    ours, used = quantize(later, precision, ranges)
    theirs = quantize_embeddings(later, precision, calibration_embeddings=sample)
    np.testing.assert_array_equal(ours, theirs)
    assert used is ranges or np.array_equal(used, ranges)
    # Clipped at the calibrated range, not recalibrated on the later batch.
    assert {ours.min(), ours.max()} == ({-128, 127} if precision == "int8" else {0, 255})
    assert not np.array_equal(ours, quantize(later, precision)[0])


def test_ranges_round_trip_through_a_file(tmp_path):
    ranges = calibrate(_vectors())
    path = save_ranges(tmp_path / "out" / "ranges.npy", ranges)
    np.testing.assert_array_equal(load_ranges(path), ranges)
    batch = _vectors(n=5, seed=3)
    np.testing.assert_array_equal(
        quantize(batch, "int8", load_ranges(path))[0], quantize(batch, "int8", ranges)[0]
    )


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_int8_round_trip_error_is_within_half_a_bucket(precision):
    vectors = _vectors()
    codes, ranges = quantize(vectors, precision)
    step = (ranges[1] - ranges[0]) / 255
    restored = dequantize(codes, precision, ranges)
    # The maximum lands in bucket 256, clipped to 255: up to one step away.
    error = np.abs(restored - vectors)
    inside = vectors < ranges[1]
    assert np.all((error <= step / 2 + 1e-5)[inside])
    assert np.all(np.abs(restored - vectors) <= step + 1e-5)


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_packed_bits_unpack_to_signs(precision):
    vectors = _vectors(dim=13)  # 13 bits: two bytes, three padding bits
    codes, _ = quantize(vectors, precision)
    assert codes.shape == (200, 2)
    signs = np.where(vectors > 0, 1, -1)
    np.testing.assert_array_equal(dequantize(codes, precision, dims=13), signs)


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_hamming_similarity_is_the_cosine_of_the_sign_vectors(precision):
    a, b = _vectors(seed=4, dim=16), _vectors(seed=5, dim=16)
    qa, qb = quantize(a, precision)[0], quantize(b, precision)[0]
    expected_hamming = ((a > 0) != (b > 0)).sum(axis=1)
    np.testing.assert_array_equal(hamming(qa, qb, precision), expected_hamming)
    signs_a, signs_b = np.sign(a), np.sign(b)
    cosine = (signs_a * signs_b).sum(axis=1) / 16
    np.testing.assert_allclose(similarity(qa, qb, precision, dims=16), cosine, atol=1e-12)


def test_int8_similarity_tracks_float_cosine():
    a, b = _vectors(seed=6), _vectors(seed=7)
    ranges = calibrate(np.vstack([a, b]))
    qa, qb = quantize(a, "int8", ranges)[0], quantize(b, "int8", ranges)[0]
    ua, ub = quantize(a, "uint8", ranges)[0], quantize(b, "uint8", ranges)[0]
    int8 = similarity(qa, qb, "int8", ranges)
    np.testing.assert_allclose(int8, similarity(ua, ub, "uint8", ranges))
    exact = similarity(a, b, "float32")
    assert np.abs(int8 - exact).max() < 0.02
    assert np.corrcoef(int8, exact)[0, 1] > 0.999
    with pytest.raises(ValueError, match="needs the calibrated ranges"):
        similarity(qa, qb, "int8")


def test_truncate_normalises_the_prefix():
    vectors = _vectors(n=3, dim=8)
    short = truncate(vectors, 4, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(short * np.linalg.norm(vectors[:, :4], axis=1)[:, None],
                               vectors[:, :4], rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="dims must be in 1..8"):
        truncate(vectors, 9)


def test_float16_and_sizes():
    codes, ranges = quantize(_vectors(), "float16")
    assert codes.dtype == np.float16 and ranges is None
    assert [bytes_per_vector(640, p) for p in ("float32", "float16", "int8", "binary")] == [
        2560, 1280, 640, 80,
    ]  # fmt: skip


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        quantize(_vectors(), "int4")
    with pytest.raises(TypeError, match="float vectors"):
        quantize(np.zeros((3, 4), dtype=np.int8), "int8")
    with pytest.raises(ValueError, match="ranges have shape"):
        quantize(_vectors(dim=4), "int8", np.zeros((2, 5)))
    with pytest.raises(ValueError, match="at least 2 vectors"):
        calibrate(_vectors(n=1))


@pytest.mark.parametrize("dims", [0, -3, 2.5, "64"])
def test_a_size_option_that_is_not_a_positive_integer_is_refused_everywhere(dims):
    """One check (``check_dims_option``) for ``lmembed encode --dims`` and ``eval --dims``."""
    from lmembed.encoding import EncodeCorpusOptions
    from lmembed.evaluation.sizes import SizeOptions

    with pytest.raises(ValueError, match="dims must be a positive integer"):
        SizeOptions(dims=[64, dims])
    with pytest.raises(ValueError, match="dims must be a positive integer"):
        EncodeCorpusOptions(dims=dims)
