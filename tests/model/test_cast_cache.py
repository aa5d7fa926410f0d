"""A GGUF cache loaded in bf16 maps a bf16 copy written once, with the same weights a cast
of the fp32 cache gives (so the load is lean and nothing about the model changes)."""

from __future__ import annotations

import json

import torch
from tiny_models import make_tiny_model

from lmembed.model.gguf_cache import SOURCE_FILE
from lmembed.model.loading import load_backbone


def test_bf16_load_of_a_gguf_cache_writes_and_reuses_a_bf16_copy(tmp_path):
    folder = make_tiny_model(tmp_path / "model-0123", "gemma3")
    (folder / SOURCE_FILE).write_text(json.dumps({"gguf": "model.gguf"}))  # as _gguf_cache does
    fp32, _ = load_backbone(str(folder), "fp32")
    bf16, _ = load_backbone(str(folder), "bf16")
    copy = tmp_path / "model-0123-bf16"
    assert (copy / SOURCE_FILE).is_file() and (copy / "tokenizer_config.json").is_file()
    weights = copy / "model.safetensors"
    assert weights.stat().st_size < (folder / "model.safetensors").stat().st_size * 0.6
    expected = {name: p.to(torch.bfloat16) for name, p in fp32.state_dict().items()}
    for name, value in bf16.state_dict().items():
        assert value.dtype == torch.bfloat16
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    written = weights.stat().st_mtime_ns
    load_backbone(str(folder), "bf16")
    assert weights.stat().st_mtime_ns == written  # reused, not rewritten


def test_a_plain_model_folder_is_cast_in_place(tmp_path):
    folder = make_tiny_model(tmp_path / "plain", "llama")
    model, _ = load_backbone(str(folder), "bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not (tmp_path / "plain-bf16").exists()
