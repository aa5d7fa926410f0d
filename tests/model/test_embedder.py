"""Embedder behaviour on tiny random models of each supported architecture."""

import numpy as np
import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from tiny_models import ARCHITECTURES, make_tiny_model, random_lora_adapter

from lmembed.model.embedder import Embedder, EmbeddingSpec
from lmembed.model.loading import ModelNotFoundError, resolve

TEXTS = ["a man is playing a guitar .", "two dogs", "the woman is eating food in the park ."]


def _embedder(folder, **kwargs) -> Embedder:
    return Embedder.from_pretrained(str(folder), dtype="fp32", **kwargs)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_eos_appended_and_pooled_regardless_of_padding_side(tmp_path, arch):
    """Left and right padding give the same vectors, equal to encoding one at a time."""
    folder = make_tiny_model(tmp_path / arch, arch, pad_is_eos=arch == "qwen2")
    embedder = _embedder(folder)
    ids = embedder.tokenize(TEXTS)
    assert all(row[-1] == embedder.tokenizer.eos_token_id for row in ids)
    alone = np.stack([embedder.encode([t])[0] for t in TEXTS])
    embedder.tokenizer.padding_side = "right"
    right = embedder.encode(TEXTS, batch_size=3)
    embedder.tokenizer.padding_side = "left"
    left = embedder.encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(right, alone, atol=1e-5)
    np.testing.assert_allclose(left, alone, atol=1e-5)


def test_last_pooling_is_hidden_state_at_eos_when_pad_equals_eos(tmp_path):
    folder = make_tiny_model(tmp_path / "qwen", "qwen2", pad_is_eos=True)
    embedder = _embedder(folder)
    assert embedder.tokenizer.pad_token_id == embedder.tokenizer.eos_token_id
    batch = embedder.collate(embedder.tokenize(TEXTS))
    with torch.no_grad():
        hidden = embedder.model(**batch).last_hidden_state
        pooled = embedder(batch)
    for row, ids in enumerate(embedder.tokenize(TEXTS)):
        position = len(ids) - 1  # right padding: EOS is the last real token
        assert batch["input_ids"][row, position] == embedder.tokenizer.eos_token_id
        assert torch.equal(pooled[row], hidden[row, position])


def test_truncation_keeps_eos(tiny_llama):
    embedder = _embedder(tiny_llama, max_length=8)
    ids = embedder.tokenize(["a very long sentence that is longer than eight tokens"])[0]
    assert len(ids) == 8
    assert ids[-1] == embedder.tokenizer.eos_token_id


def test_prompt_template_is_applied(tiny_llama):
    plain = _embedder(tiny_llama)
    prompted = _embedder(tiny_llama, prompt="{s} is: ")
    assert prompted.apply_prompt(["dog"]) == ["dog is: "]
    assert not np.allclose(plain.encode(["dog"]), prompted.encode(["dog"]))


def test_encode_keeps_input_order_and_float32(tiny_llama):
    embedder = _embedder(tiny_llama)
    vectors = embedder.encode(TEXTS, batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 32)
    np.testing.assert_allclose(vectors[1], embedder.encode([TEXTS[1]])[0], atol=1e-5)


def test_mean_pooling_differs_from_last(tiny_llama):
    last = _embedder(tiny_llama).encode(TEXTS)
    mean = _embedder(tiny_llama, pooling="mean").encode(TEXTS)
    assert not np.allclose(last, mean)


def test_bad_specs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="must contain"):
        EmbeddingSpec(model="x", prompt="no placeholder")
    with pytest.raises(ValueError, match="pooling"):
        EmbeddingSpec(model="x", pooling="max")
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="not a packaged alias"):
        resolve("no-such-model")
    assert resolve("microsoft/phi-2") == "microsoft/phi-2"


def _first_token_states(embedder: Embedder, texts: list[str]) -> torch.Tensor:
    """The backbone's last hidden state at position 0, captured inside ``Embedder.forward``."""
    seen = []
    hook = embedder.model.register_forward_hook(lambda m, a, out: seen.append(out[0]))
    with torch.no_grad():
        embedder(embedder.collate(embedder.tokenize(texts)))
    hook.remove()
    return seen[0][:, 0]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_bidirectional_attention_sees_later_tokens_and_never_pads(tiny_models, arch):
    """With bidirectional attention the first token's state depends on the last word (not
    so when causal), and padding on either side still gives the vectors of texts alone."""
    causal = _embedder(tiny_models[arch], pooling="mean")
    both = _embedder(tiny_models[arch], pooling="mean", attention="bidirectional")
    texts = ["a cat sits", "a cat runs"]  # the same length: no padding
    first = _first_token_states(causal, texts)
    torch.testing.assert_close(first[0], first[1])
    first = _first_token_states(both, texts)
    assert not torch.allclose(first[0], first[1], atol=1e-4)
    alone = np.stack([both.encode([t])[0] for t in TEXTS])
    for side in ("left", "right"):
        both.tokenizer.padding_side = side
        np.testing.assert_allclose(both.encode(TEXTS, batch_size=3), alone, atol=1e-5)
    assert not np.allclose(causal.encode(TEXTS), alone, atol=1e-3)


def test_bidirectional_mask_matches_transformers_own_switch(tmp_path):
    """On Gemma-3, whose config has a bidirectional switch (EmbeddingGemma), our mask gives
    exactly the hidden states transformers gives with the switch on."""
    folder = make_tiny_model(tmp_path / "gemma3", "gemma3", padding_side="left")
    ours = _embedder(folder, attention="bidirectional", pooling="mean")
    theirs = _embedder(folder, pooling="mean")
    theirs.model.config.use_bidirectional_attention = True
    texts = ["a cat", "the dog ran"]  # in tokens, shorter than the sliding window (16)
    np.testing.assert_allclose(ours.encode(texts), theirs.encode(texts), atol=1e-5)
    theirs.model.config.use_bidirectional_attention = False
    assert not np.allclose(ours.encode(texts), theirs.encode(texts), atol=1e-3)


def test_inference_merges_lora_into_fp32_weights_with_the_same_vectors(tiny_llama, tmp_path):
    adapter = random_lora_adapter(tmp_path / "adapter", tiny_llama)
    merged = Embedder.from_pretrained(adapter=adapter)
    separate = Embedder.from_pretrained(adapter=adapter, merge=False)
    assert isinstance(separate.model, PeftModel)
    assert not isinstance(merged.model, PeftModel)
    assert not any(isinstance(m, LoraLayer) for m in merged.model.modules())
    want = separate.encode(TEXTS)
    base = _embedder(tiny_llama).encode(TEXTS)
    assert np.abs(base - want).max() > 1e-2, "the adapter changed too little to tell"
    np.testing.assert_allclose(merged.encode(TEXTS), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="merge=False"):
        merged.save_adapter(tmp_path / "again")
    separate.save_adapter(tmp_path / "again")  # the unmerged one still saves


def test_bf16_inference_keeps_the_adapter_separate(tiny_llama, tmp_path):
    """Rounding W + BA to bf16 would lose the update below W's last bit, so no merge there."""
    adapter = random_lora_adapter(tmp_path / "adapter", tiny_llama)
    assert isinstance(Embedder.from_pretrained(adapter=adapter, dtype="bf16").model, PeftModel)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_forward_builds_no_kv_cache_and_gives_the_same_vectors(tiny_models, arch):
    """An embedder never decodes, so its forward passes build no KV cache (a cache per pass
    costs time and breaks torch.compile's graphs); the vectors are those with a cache."""
    embedder = _embedder(tiny_models[arch])
    batch = embedder.collate(embedder.tokenize(TEXTS))
    seen = []
    hook = embedder.model.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        without = embedder(batch)
        embedder.model.config.use_cache = True  # what the checkpoint's config asks for
        with_cache = embedder(batch)
    hook.remove()
    assert getattr(seen[0], "past_key_values", None) is None
    assert seen[1].past_key_values is not None, "the teeth: a decoder does build one"
    torch.testing.assert_close(without, with_cache)
