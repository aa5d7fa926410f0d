"""LoRA on a frozen backbone (peft): attach, save with the embedding spec, load, merge."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
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
    return get_peft_model(model, config)


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
