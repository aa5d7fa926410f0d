"""Two LoRA training-step candidates of ``bench_step_options.py`` that change how the
adapter computes, not what it is: measured, not adopted.

* Fast LoRA dropout (``use_fast_dropout``): every LoRA layer's ``torch.nn.Dropout`` becomes
  a ``FastDropout`` of the same p, whose masks come from 15-bit random lanes, four elements
  per 64-bit draw instead of one Bernoulli draw each: the same distribution with p rounded
  to 1/32768, but other draws than torch's dropout for a seed.
* LoRA in the base dtype (``compute_in_base_dtype``): on a bf16 base, the adapter computes
  in bf16 from its fp32 weights (cast r x d elements per factor, ``BaseDtypeLinear``)
  instead of peft casting every adapted layer's activations to fp32 and the sum back; its
  weights, gradients, optimizer state, parameter names and saved adapters stay as they
  were. On an fp32 base it changes nothing.

A whole demo run showed no gain for either, so, like packing (``bench/packing.py``), they
live here, not in ``lmembed``; docs/benchmarks.md, "Training-step candidates", has their
measurements. Both functions take the built ``Embedder`` (or any module holding peft LoRA
layers, such as its peft model), for a new LoRA or an adapter trained further; with
``--compile`` apply them before the first step (``compile`` traces at the first call).
tests/test_bench_lora_candidates.py checks them.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer


class FastDropout(torch.nn.Module):
    """Dropout whose mask comes from 15 random bits per element, four elements per draw.

    torch's dropout draws one Bernoulli sample per element, a visible share of a
    frozen-base LoRA step on a CPU. One 64-bit draw gives four 16-bit lanes; the top lane
    holds only 15 random bits (``random_`` stays below 2**63), so every lane keeps its low
    15 and drops where they reach the threshold. The generator is torch's global one, so
    checkpoints and GradCache's replay hold.
    """

    LANES = 4  # int16 lanes per int64 draw
    LEVELS = 1 << 15

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round((1 - p) * self.LEVELS)  # lanes below it are kept
        if not 0 <= p < 1 or self.threshold == 0:
            raise ValueError(f"dropout p must be in [0, 1 - 2**-16), got {p}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        draws = torch.empty(-(-x.numel() // self.LANES), dtype=torch.int64, device=x.device)
        lanes = draws.random_().view(torch.int16)[: x.numel()].view(x.shape)
        drop = lanes.bitwise_and_(self.LEVELS - 1) >= self.threshold
        return (x * (self.LEVELS / self.threshold)).masked_fill_(drop, 0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def lora_dropouts(model: torch.nn.Module) -> list[tuple[torch.nn.ModuleDict, str]]:
    """Every LoRA layer's dropout slot: its ``lora_dropout`` dict and the adapter's name."""
    return [
        (module.lora_dropout, name)
        for module in model.modules()
        if isinstance(module, LoraLayer)
        for name in module.lora_dropout
    ]


def use_fast_dropout(model: torch.nn.Module) -> None:
    """Swap every LoRA layer's ``torch.nn.Dropout`` in ``model`` (an ``Embedder`` or its peft
    model) for a ``FastDropout`` of the same p (peft uses ``Identity`` at p = 0, which
    stays)."""
    for slot, name in lora_dropouts(model):
        if isinstance(slot[name], torch.nn.Dropout):
            slot[name] = FastDropout(slot[name].p)


class BaseDtypeLinear(torch.nn.Linear):
    """A LoRA factor that computes in its input's dtype: the fp32 weight (the optimizer's
    copy) is cast, r x d elements, instead of the tokens x d activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


def compute_in_base_dtype(model: torch.nn.Module) -> None:
    """Make every LoRA layer in ``model`` (an ``Embedder`` or its peft model) compute in its
    input's dtype: peft casts the input to the adapter weights' dtype (bf16 -> fp32 on a
    bf16 base, then the sum back) at every adapted layer; here the factors become
    ``BaseDtypeLinear`` holding the same weights, so parameter names, checkpoints and saved
    adapters do not change."""
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        module.cast_input_dtype_enabled = False
        for factors in (module.lora_A, module.lora_B):
            for name, linear in factors.items():
                if type(linear) is torch.nn.Linear:
                    fast = BaseDtypeLinear(
                        linear.in_features, linear.out_features, linear.bias is not None, "meta"
                    )
                    fast.weight = linear.weight
                    fast.bias = linear.bias
                    factors[name] = fast
