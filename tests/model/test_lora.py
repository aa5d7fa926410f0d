"""``FastDropout``: torch dropout's distribution from a quarter of the random draws."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmembed.model.lora import FastDropout, LoraOptions, attach_lora, lora_dropouts


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
