"""LoRA on a frozen backbone (peft): attach, save with the embedding spec, load, merge."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from lmembed.model.embedder import SPEC_FILE, Embedder


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct short names of the model's linear layers (what LoRA can target)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    return sorted(names)


def attach_lora(
    model: PreTrainedModel,
    r: int = 8,
    alpha: int = 32,
    dropout: float = 0.1,
    targets: tuple[str, ...] | list[str] = ("q_proj", "v_proj"),
) -> PeftModel:
    """Wrap ``model`` with trainable LoRA adapters; every base weight stays frozen."""
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ValueError(
            f"LoRA target(s) {missing} not found in {type(model).__name__}; "
            f"its linear modules are: {', '.join(available)}"
        )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none"
    )
    return get_peft_model(model, config)


def save_adapter(embedder: Embedder, folder: str | Path) -> None:
    """Write the peft adapter and lmembed's spec into ``folder``, file by file atomically.

    ``folder`` may hold other things (a training run's log and checkpoint), so it
    is not replaced whole; the spec is moved in last.
    """
    if not isinstance(embedder.model, PeftModel):
        raise TypeError("save_adapter needs an Embedder whose model has LoRA attached")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".adapter.") as tmp:
        embedder.model.save_pretrained(tmp)
        embedder.spec.save(tmp)
        for path in sorted(Path(tmp).iterdir(), key=lambda p: p.name == SPEC_FILE):
            os.replace(path, folder / path.name)


def load_adapter(model: PreTrainedModel, folder: str | Path, trainable: bool = False) -> PeftModel:
    return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)


def merge_lora(embedder: Embedder) -> Embedder:
    """Fold LoRA into the base weights (faster inference, plain transformers model)."""
    if isinstance(embedder.model, PeftModel):
        embedder.model = embedder.model.merge_and_unload()
    return embedder
