"""The benchmarks' reference recipe follows the paper's code: no EOS, loss in the model dtype;
``reference+eos`` is that code with EOS appended and the loss in fp32."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_tokenizer  # noqa: E402

from bench.systems import TRAINERS, paper_info_nce, reference_tokenize  # noqa: E402
from lmembed.losses import info_nce  # noqa: E402

TEXTS = ["a cat sits", "dogs run in the park today", "x"]


@pytest.fixture
def tokenizer():
    return tiny_tokenizer(pad_is_eos=True, padding_side="left")


def test_the_paper_pads_to_max_length_and_pools_the_last_text_token(tokenizer) -> None:
    batch = reference_tokenize(tokenizer, TEXTS, max_length=12)
    truncated = [ids[:12] for ids in tokenizer(TEXTS)["input_ids"]]
    assert batch["input_ids"].shape == (3, 12)
    for row, mask, ids in zip(batch["input_ids"], batch["attention_mask"], truncated, strict=True):
        assert row[-1].item() == ids[-1] != tokenizer.eos_token_id
        assert row[mask.bool()].tolist() == ids  # left padding, no EOS


def test_reference_plus_eos_ends_every_text_with_eos_within_max_length(tokenizer) -> None:
    batch = reference_tokenize(tokenizer, TEXTS, max_length=12, eos=True)
    assert batch["input_ids"].shape == (3, 12)
    assert (batch["input_ids"][:, -1] == tokenizer.eos_token_id).all()
    longest = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
    assert longest == tokenizer(TEXTS[1])["input_ids"][:11] + [tokenizer.eos_token_id]
    unpadded = reference_tokenize(tokenizer, TEXTS, max_length=12, pad=False, eos=True)
    assert unpadded["input_ids"].shape[1] == 12  # the longest text, truncated, plus EOS


def test_paper_loss_equals_lmembeds_in_fp32_and_stays_in_bf16() -> None:
    anchors, positives, negatives = torch.randn(3, 5, 16).unbind(0)
    exact = info_nce(anchors, positives, negatives, temperature=0.05)
    torch.testing.assert_close(paper_info_nce(anchors, positives, negatives, 0.05), exact)
    low = paper_info_nce(anchors.bfloat16(), positives.bfloat16(), negatives.bfloat16(), 0.05)
    assert low.dtype == torch.bfloat16
    assert torch.isclose(low.float(), exact, rtol=0.05)


def test_both_reference_variants_are_trainers() -> None:
    assert TRAINERS["reference"].__name__ == "train_reference"
    assert TRAINERS["reference+eos"].keywords == {"eos": True}
