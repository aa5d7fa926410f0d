"""Tiny random decoder models built from configs (no downloads), and where shared data lives.

A plain module (not conftest) so test files can import it by a name no other
conftest shadows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModel, PreTrainedTokenizerFast
from transformers.models.gemma.configuration_gemma import GemmaConfig
from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.phi.configuration_phi import PhiConfig
from transformers.models.qwen2.configuration_qwen2 import Qwen2Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(
    os.environ.get("LMEMBED_DATA_DIR") or Path(__file__).parents[2] / "shared" / "data"
)


GET_SHARED_DATA = (
    "set LMEMBED_DATA_DIR to the shared benchmark data folder (`make test` sets it when "
    "../shared/data exists; its README.md says how it was built)"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str, how: str) -> NoReturn:
    """Fail under CI (``CI=true``), where a skip would leave the test unrun yet green;
    elsewhere skip, saying how to get what is missing."""
    message = f"{what} is missing: {how}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a test that cannot run fails)", pytrace=False)
    pytest.skip(message)


def require_shared(relative: str = "sts") -> Path:
    """``SHARED_DATA / relative``, or fail under CI / skip locally when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        missing(f"shared data {path}", GET_SHARED_DATA)
    return path


def shared_data_dir() -> Path:
    """``SHARED_DATA``, holding the STS benchmark files (fails under CI when absent)."""
    require_shared("sts")
    return SHARED_DATA


def require_packaged_model(name: str) -> Path:
    """The installed files of packaged model ``name`` (fails under CI when not installed)."""
    from lmembed.model.loading import PACKAGED_MODELS, ModelNotFoundError

    try:
        return PACKAGED_MODELS[name].locate()
    except ModelNotFoundError:
        missing(f"packaged model {name!r}", PACKAGED_MODELS[name].pip_install)


SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def tiny_tokenizer(
    pad_is_eos: bool = False, padding_side: str = "right"
) -> PreTrainedTokenizerFast:
    """Byte-level, one token per character: the shape Qwen2's tokenizer class rebuilds."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIALS + alphabet)}
    backend = Tokenizer(models.BPE(vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>" if pad_is_eos else "<pad>",
        padding_side=padding_side,
    )


ARCHITECTURES = {
    "llama": lambda v: LlamaConfig(vocab_size=v, **TINY),
    "gemma": lambda v: GemmaConfig(vocab_size=v, head_dim=8, **TINY),
    "gemma3": lambda v: Gemma3TextConfig(vocab_size=v, head_dim=8, sliding_window=16, **TINY),
    "phi": lambda v: PhiConfig(vocab_size=v, **{**TINY, "num_key_value_heads": 4}),
    "qwen2": lambda v: Qwen2Config(vocab_size=v, **TINY),
}


def make_tiny_model(
    folder: Path,
    arch: str = "llama",
    pad_is_eos: bool = False,
    padding_side: str = "right",
    **sizes: int,
) -> Path:
    """Write a randomly initialised ``arch`` model and tokenizer to ``folder``; ``sizes``
    override config fields (``hidden_size=256``: big enough to measure memory)."""
    tokenizer = tiny_tokenizer(pad_is_eos, padding_side)
    config = ARCHITECTURES[arch](len(tokenizer))
    for name, value in sizes.items():
        setattr(config, name, value)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_lora_adapter(folder: Path, base: Path) -> str:
    """An all-linear adapter with a random update (a fresh LoRA's B is zero: no change)."""
    from lmembed.model.embedder import Embedder, EmbeddingSpec
    from lmembed.model.loading import load_backbone
    from lmembed.model.lora import LoraOptions, attach_lora

    backbone, tokenizer = load_backbone(str(base), "fp32")
    peft_model = attach_lora(backbone, LoraOptions(targets=["all-linear"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)
    Embedder(peft_model, tokenizer, EmbeddingSpec(model=str(base), dtype="fp32")).save_adapter(
        folder
    )
    return str(folder)
