"""Evaluation at every size: the wrapper's cosine is the quantised similarity, and the
table's scores equal a hand computation with the quantised vectors."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from lmembed.data.sts import load_sts
from lmembed.evaluation.sizes import (
    MemoEncoder,
    SizedEncoder,
    SizeOptions,
    SizeRow,
    evaluate_sizes,
)
from lmembed.evaluation.sts import score_task
from lmembed.model import Embedder
from lmembed.quantization import quantize, similarity, truncate

WORDS = ["man", "woman", "dog", "cat", "guitar", "car", "park", "river", "food", "music"]


@pytest.fixture(scope="module")
def embedder(tiny_llama):
    return Embedder.from_pretrained(model=str(tiny_llama), dtype="fp32")


@pytest.fixture
def sts_file(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["sentence1\tsentence2\tscore"]
    for i in range(40):
        a, b = WORDS[i % 10], WORDS[(i * 3 + 1) % 10]
        rows.append(f"a {a} and a {b} {i}\tthe {b} near the {a}\t{rng.uniform(0, 5):.2f}")
    path = tmp_path / "tiny_sts.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _pairs(embedder, n=30):
    texts = [f"the {WORDS[i % 10]} sees a {WORDS[(i * 7) % 10]} {i}" for i in range(2 * n)]
    return texts, embedder.encode(texts)


@pytest.mark.parametrize("precision", ["float32", "float16", "int8", "uint8", "binary", "ubinary"])
def test_wrapper_cosine_is_the_quantised_similarity(embedder, precision):
    texts, vectors = _pairs(embedder)
    sized = SizedEncoder(embedder, 16, precision)
    out = sized.encode(texts)
    assert out.shape == (60, 16) and sized.spec.to_dict()["precision"] == precision
    cosine = np.einsum("ij,ij->i", out[:30], out[30:])
    codes, _ = quantize(truncate(vectors, 16, normalize=True), precision, sized.ranges)
    expected = similarity(codes[:30], codes[30:], precision, sized.ranges, dims=16)
    np.testing.assert_allclose(cosine, expected, atol=1e-5)


def test_int8_ranges_come_from_the_first_call(embedder):
    texts, vectors = _pairs(embedder)
    sized = SizedEncoder(embedder, None, "int8")
    sized.encode(texts[:20])
    first = sized.ranges.copy()
    sized.encode(texts[20:])
    np.testing.assert_array_equal(sized.ranges, first)
    unit = truncate(vectors[:20], None, normalize=True)
    np.testing.assert_allclose(first, np.vstack([unit.min(0), unit.max(0)]), atol=1e-6)


def test_memo_encoder_embeds_each_text_once(embedder):
    calls = []

    class Counting:
        spec, dimension = embedder.spec, embedder.dimension

        def encode(self, texts, batch_size=32, show_progress=None, role=None):
            calls.append(list(texts))
            return embedder.encode(texts, batch_size, show_progress, role)

    memo = MemoEncoder(Counting())
    a = memo.encode(["x", "y"])
    b = memo.encode(["y", "z", "x"])
    assert calls == [["x", "y"], ["z"]]
    np.testing.assert_array_equal(b[[0, 2]], a[[1, 0]])


def test_table_scores_match_hand_computation(embedder, sts_file, tmp_path):
    table = evaluate_sizes(embedder, [32, 8], ["float32", "binary"], tasks=[str(sts_file)])
    assert [(r.dims, r.precision, r.bytes) for r in table.rows] == [
        (32, "float32", 128), (32, "binary", 4), (8, "float32", 32), (8, "binary", 1),
    ]  # fmt: skip
    task = load_sts(str(sts_file))
    full = table.rows[0].scores[str(sts_file)]
    assert full == pytest.approx(score_task(embedder, task, show_progress=False).spearman, abs=1e-4)
    left, right = embedder.encode(task.sentences1), embedder.encode(task.sentences2)
    bits_l, bits_r = quantize(left[:, :8], "ubinary")[0], quantize(right[:, :8], "ubinary")[0]
    hand = spearmanr(task.scores, similarity(bits_l, bits_r, "ubinary", dims=8)).statistic * 100
    assert table.rows[3].scores[str(sts_file)] == pytest.approx(hand, abs=1e-6)

    markdown = table.to_markdown()
    assert "| 8 | binary | 1 |" in markdown and markdown.count("\n") == 6
    json_path, md_path, png_path = table.save(tmp_path / "report")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sizes.png" in md_path.read_text() and json_path.stat().st_size > 0


def test_options_are_checked(embedder, sts_file):
    with pytest.raises(ValueError, match="precision must be one of"):
        SizeOptions(precision=["int4"])
    with pytest.raises(ValueError, match="exceed the embedding size 32"):
        evaluate_sizes(embedder, [64], ["float32"], tasks=[str(sts_file)])


def test_average_is_over_sts_tasks_with_retrieval_beside_it():
    row = SizeRow(64, "int8", 64, {"stsb": 80.0, "sickr": 70.0, "toy ndcg@10": 10.0})
    assert row.average == 75.0
    assert SizeRow(64, "int8", 64, {"toy ndcg@10": 10.0, "other ndcg@10": 20.0}).average == 15.0
