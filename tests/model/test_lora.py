"""LoRA on the top layers only (the LoRA step candidates' tests are in
tests/test_bench_lora_candidates.py)."""

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import AutoModel

from lmembed.model import Embedder
from lmembed.model.lora import LoraOptions, attach_lora
from lmembed.training.config import TrainConfig
from lmembed.training.trainer import build_embedder


@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi", "qwen2"])
@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj"]])
def test_top_layers_adapts_only_the_last_layers(tiny_models, arch, targets):
    model = AutoModel.from_pretrained(tiny_models[arch])
    peft_model = attach_lora(model, LoraOptions(targets=targets, top_layers=1))
    adapted = {name.split(".layers.")[1].split(".")[0] for name in _lora_layers(peft_model)}
    assert adapted == {"1"}  # the tiny models have layers 0 and 1
    every = _lora_layers(attach_lora(AutoModel.from_pretrained(tiny_models[arch]),
                                     LoraOptions(targets=targets)))  # fmt: skip
    assert len(every) == 2 * len(_lora_layers(peft_model))


def test_below_the_top_layers_no_gradient_is_tracked(tiny_llama):
    """What makes the steps faster: the frozen layers under the adapted ones build no
    autograd graph, so the backward pass stops at the lowest adapted layer."""
    config = TrainConfig.from_flat(
        model=str(tiny_llama), output="unused", dtype="fp32", lora_top_layers=1
    )
    embedder = build_embedder(config.replace(lora_targets=["all-linear"])).train()
    tracked = {}
    layers = embedder.model.base_model.model.layers
    for index, layer in enumerate(layers):
        layer.register_forward_hook(
            lambda module, args, out, i=index: tracked.__setitem__(i, _hidden(out).requires_grad)
        )
    embedder.embed(["a man is eating .", "the dog runs ."]).sum().backward()
    assert tracked == {0: False, 1: True}


def test_top_layers_beyond_the_model_are_refused(tiny_llama):
    model = AutoModel.from_pretrained(tiny_llama)
    with pytest.raises(ValueError, match="top_layers is 3, but LlamaModel has 2 layers"):
        attach_lora(model, LoraOptions(top_layers=3))
    with pytest.raises(ValueError, match="at least 1"):
        LoraOptions(top_layers=0)


def test_a_top_layers_adapter_reloads_with_the_same_vectors(tiny_llama, tmp_path):
    config = TrainConfig.from_flat(
        model=str(tiny_llama), output="unused", dtype="fp32", lora_top_layers=1
    )
    embedder = build_embedder(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in embedder.model.named_parameters():
            if "lora_B" in name:  # a fresh LoRA's B is zero: no change to test
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)
    texts = ["a man is eating .", "the dog runs ."]
    embedder.save_adapter(tmp_path)
    reloaded = Embedder.from_pretrained(adapter=tmp_path, merge=False)
    assert {n.split(".layers.")[1][0] for n in _lora_layers(reloaded.model)} == {"1"}
    np.testing.assert_allclose(reloaded.encode(texts), embedder.encode(texts), atol=1e-6)


def _lora_layers(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output
