"""LoRA on a frozen backbone (peft): attach, save with the embedding spec, load, merge."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from lmembed.model.spec import SPEC_FILE, EmbeddingSpec
from lmembed.options import option

ALL_LINEAR = "all-linear"


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct short names of the model's linear layers (what LoRA can target)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    return sorted(names)


@dataclass
class LoraOptions:
    """The LoRA adapter trained on the frozen base (flags ``--lora-r``, ``--lora-alpha``...)."""

    r: int = option(8, "LoRA rank")
    alpha: int = option(32, "LoRA alpha (the update is scaled by alpha / r)")
    dropout: float = option(0.1, "LoRA dropout")
    targets: list[str] = option(
        ["q_proj", "v_proj"], f"linear modules to adapt, or {ALL_LINEAR} for every one"
    )
    top_layers: int | None = option(
        None,
        "adapt only the last N transformer layers; the backward pass then stops below "
        "them, so steps are faster (the embedding is the last layer's); every layer when "
        "unset",
    )
    fast_dropout: bool = option(
        False,
        "draw LoRA dropout masks from 15-bit random lanes (p rounded to 1/32768): the same "
        "distribution at about a quarter of the random-number cost (1.03x per step with LoRA "
        "on q/v, 1.09x on every linear layer, 2-core CPUs, docs/benchmarks.md), but other "
        "draws than torch's dropout for a seed",
    )
    compute_in_base_dtype: bool = option(
        False,
        "on a bf16 base, run the adapter in bf16 too (its weights and optimizer stay fp32) "
        "instead of casting every adapted layer's activations to fp32 and the sum back. On a "
        "native-bf16 2-core CPU: 1.14x per step in a paired benchmark (median; 0.94-1.46) but "
        "no gain over a whole 64-step run (363 s against 362), STSb dev 84.64 against 84.71 "
        "(docs/benchmarks.md). No effect on an fp32 base",
    )

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        if self.r < 1:
            raise ValueError(f"lora r must be at least 1, got {self.r}")
        if self.top_layers is not None and self.top_layers < 1:
            raise ValueError(f"lora top_layers must be at least 1, got {self.top_layers}")


def attach_lora(model: PreTrainedModel, options: LoraOptions | None = None) -> PeftModel:
    """Wrap ``model`` with trainable LoRA adapters; every base weight stays frozen."""
    options = options or LoraOptions()
    targets: list[str] | str = options.targets
    if options.targets == [ALL_LINEAR]:
        # peft limits layers only for a list of names; lm_head is no layer's
        targets = ALL_LINEAR
        if options.top_layers is not None:
            targets = [name for name in linear_module_names(model) if name != "lm_head"]
    else:
        available = linear_module_names(model)
        missing = [t for t in options.targets if t not in available]
        if missing:
            raise ValueError(
                f"LoRA target(s) {missing} not found in {type(model).__name__}; "
                f"its linear modules are: {', '.join(available)} (or {ALL_LINEAR})"
            )
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=targets,
        bias="none",
        **_top_layers(model, options.top_layers),
    )
    model = get_peft_model(model, config)
    speed_up(model, options)
    return model


def speed_up(model: PeftModel, options: LoraOptions) -> None:
    """Apply the options that change how the adapter computes, not what it is."""
    if options.fast_dropout:
        use_fast_dropout(model)
    if options.compute_in_base_dtype:
        compute_in_base_dtype(model)


def _top_layers(model: PreTrainedModel, count: int | None) -> dict:
    """peft's options that adapt only the last ``count`` transformer layers (none: all)."""
    if count is None:
        return {}
    total = model.config.get_text_config().num_hidden_layers
    if count > total:
        raise ValueError(
            f"lora top_layers is {count}, but {type(model).__name__} has {total} layers"
        )
    stacks = [
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == total
    ]
    if not stacks:
        raise ValueError(f"no list of {total} layers found in {type(model).__name__}")
    return {"layers_to_transform": list(range(total - count, total)), "layers_pattern": stacks[0]}


class FastDropout(torch.nn.Module):
    """Dropout whose mask comes from 15 random bits per element, four elements per draw.

    torch's dropout draws one Bernoulli sample per element, which costs about 15% of a
    frozen-base LoRA step on a CPU (docs/benchmarks.md). One 64-bit draw gives four
    16-bit lanes; the top lane holds only 15 random bits (``random_`` stays below
    2**63), so every lane keeps its low 15 and drops where they reach the threshold.
    The generator is torch's global one, so checkpoints and GradCache's replay hold.
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


def use_fast_dropout(model: PeftModel) -> None:
    """Swap every LoRA layer's ``torch.nn.Dropout`` for a ``FastDropout`` of the same p
    (peft uses ``Identity`` at p = 0, which stays)."""
    for slot, name in lora_dropouts(model):
        if isinstance(slot[name], torch.nn.Dropout):
            slot[name] = FastDropout(slot[name].p)


class BaseDtypeLinear(torch.nn.Linear):
    """A LoRA factor that computes in its input's dtype: the fp32 weight (the optimizer's
    copy) is cast, r x d elements, instead of the tokens x d activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


def compute_in_base_dtype(model: PeftModel) -> None:
    """Make every LoRA layer compute in its input's dtype: peft casts the input to the
    adapter weights' dtype (bf16 -> fp32 on a bf16 base, then the sum back) at every
    adapted layer; here the factors become ``BaseDtypeLinear`` holding the same weights,
    so parameter names, checkpoints and saved adapters do not change."""
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


def save_adapter(model: PeftModel, spec: EmbeddingSpec, folder: str | Path) -> None:
    """Write the peft adapter and lmembed's spec into ``folder``, file by file atomically.

    ``folder`` may hold other things (a training run's log and checkpoint), so it
    is not replaced whole; the spec is moved in last. peft's README.md (an empty
    template naming the base by its local path) stays out: the caller writes the
    card (``lmembed.model_card.write_card``), which a later save must not replace.
    """
    if not isinstance(model, PeftModel):
        raise TypeError("save_adapter needs a model with LoRA attached")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".adapter.") as tmp:
        model.save_pretrained(tmp)
        (Path(tmp) / "README.md").unlink(missing_ok=True)
        spec.replace(adapter=None).save(tmp)
        for path in sorted(Path(tmp).iterdir(), key=lambda p: p.name == SPEC_FILE):
            os.replace(path, folder / path.name)


def load_adapter(model: PreTrainedModel, folder: str | Path, trainable: bool = False) -> PeftModel:
    return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)


def merge_lora(model: PreTrainedModel) -> PreTrainedModel:
    """Fold LoRA into the base weights (faster inference, plain transformers model)."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model
