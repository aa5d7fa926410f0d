"""``FastDropout``: torch dropout's distribution from a quarter of the random draws; LoRA on
the top layers only."""

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import AutoModel, AutoModelForCausalLM

from lmembed.model import Embedder
from lmembed.model.lora import FastDropout, LoraOptions, attach_lora, lora_dropouts
from lmembed.training.config import TrainConfig
from lmembed.training.trainer import build_embedder


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_every_lane_drops_with_probability_p(p):
    """Each int64 draw feeds four int16 lanes: three signed, the top one with a random bit
    fewer; without the 15-bit mask, lane positions would drop at different rates."""
    torch.manual_seed(0)
    lanes = FastDropout.LANES
    out = FastDropout(p).train()(torch.ones(lanes * 250_000)).view(-1, lanes)
    dropped = (out == 0).double().mean(dim=0)
    sd = (p * (1 - p) / out.shape[0]) ** 0.5
    torch.testing.assert_close(dropped, torch.full_like(dropped, p), rtol=0, atol=5 * sd)


def test_kept_values_are_rescaled_so_the_mean_is_unchanged_and_gradients_follow_the_mask():
    torch.manual_seed(0)
    dropout = FastDropout(0.3).train()
    x = torch.randn(3, 5, 7, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    scale = FastDropout.LEVELS / dropout.threshold
    torch.testing.assert_close(y[kept], x[kept] * scale)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)
    assert y.shape == x.shape and 0 < kept.float().mean() < 1


def test_eval_mode_and_p_zero_are_the_identity():
    x = torch.randn(4, 9)
    assert FastDropout(0.1).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout p"):
        FastDropout(1.0)


def test_same_seed_gives_the_same_mask():
    x = torch.ones(1000)
    torch.manual_seed(3)
    a = FastDropout(0.1).train()(x)
    torch.manual_seed(3)
    b = FastDropout(0.1).train()(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("fast", [False, True])
def test_attach_lora_swaps_every_lora_dropout_only_when_asked(tiny_llama, fast):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft_model = attach_lora(model, LoraOptions(targets=["q_proj", "v_proj"], fast_dropout=fast))
    dropouts = [slot[name] for slot, name in lora_dropouts(peft_model)]
    assert len(dropouts) == 2 * model.config.num_hidden_layers
    kinds = {type(d) for d in dropouts}
    assert kinds == ({FastDropout} if fast else {torch.nn.Dropout})
    assert all(d.p == 0.1 for d in dropouts)


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


def _lora_pair(path: str, dtype: torch.dtype) -> tuple:
    """The same random LoRA (A and B nonzero, dropout 0) on two copies of a base: as peft
    computes it, and with ``compute_in_base_dtype``."""
    models = []
    for fast in (False, True):
        torch.manual_seed(0)
        base = AutoModel.from_pretrained(path, dtype=dtype)
        options = LoraOptions(targets=["all-linear"], dropout=0.0, compute_in_base_dtype=fast)
        models.append(attach_lora(base, options))
    generator = torch.Generator().manual_seed(1)
    for (_, a), (_, b) in zip(*(m.named_parameters() for m in models), strict=True):
        if a.requires_grad:
            a.data = torch.randn(a.shape, generator=generator) * 0.05
            b.data = a.data.clone()
    return models


def _factor_inputs(model) -> list[torch.dtype]:
    """Run the model once; the dtype each LoRA A factor saw."""
    seen = []
    hooks = [
        layer.lora_A["default"].register_forward_hook(
            lambda m, args, out: seen.append(args[0].dtype)
        )
        for layer in model.modules()
        if isinstance(layer, LoraLayer)
    ]
    model(input_ids=torch.tensor([[1, 5, 9, 3, 2]]))
    for hook in hooks:
        hook.remove()
    return seen


def test_base_dtype_lora_computes_in_bf16_with_fp32_weights_and_the_same_names(tiny_llama):
    """On a bf16 base peft casts each adapted layer's input to fp32; ``compute_in_base_dtype``
    keeps it bf16, with the same fp32 parameters (names, values, gradients) and the same
    output up to bf16 rounding."""
    peft_way, fast = _lora_pair(str(tiny_llama), torch.bfloat16)
    assert set(_factor_inputs(peft_way)) == {torch.float32}
    assert set(_factor_inputs(fast)) == {torch.bfloat16}
    trainable = {n: p for n, p in fast.named_parameters() if p.requires_grad}
    assert trainable.keys() == {n for n, p in peft_way.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trainable.values())
    ids = torch.tensor([[1, 5, 9, 3, 2, 7, 7, 4]])
    outputs = [m(input_ids=ids).last_hidden_state.float() for m in (peft_way, fast)]
    cosine = torch.nn.functional.cosine_similarity(*outputs, dim=-1)
    assert cosine.min() > 0.999
    outputs[1].sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())
    assert any(p.grad.abs().sum() > 0 for n, p in trainable.items() if "lora_A" in n)


def test_base_dtype_lora_changes_nothing_on_an_fp32_base(tiny_llama):
    peft_way, fast = _lora_pair(str(tiny_llama), torch.float32)
    ids = torch.tensor([[1, 5, 9, 3, 2]])
    torch.testing.assert_close(
        fast(input_ids=ids).last_hidden_state,
        peft_way(input_ids=ids).last_hidden_state,
        rtol=0,
        atol=0,
    )
