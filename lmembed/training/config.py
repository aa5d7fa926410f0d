"""``TrainConfig``: every training option, typed, with help text (peft-style).

Precedence: dataclass defaults < YAML file (``--config``) < command-line flags.
The CLI builds its ``train`` flags from these fields, so an option is declared
once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


def option(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Options for ``lmembed train``; defaults follow the paper."""

    model: str = option("gemma-3-270m", "model: packaged alias, .gguf, folder or hub id")
    data: str = option("", "NLI triplets: .csv/.csv.gz/.jsonl/.parquet or a hub dataset id")
    output: str = option("", "output folder: adapter, checkpoint, log.jsonl")
    steps: int | None = option(1000, "optimizer steps (ignored when --epochs is given)")
    epochs: float | None = option(None, "train for this many passes over the data instead")
    batch_size: int = option(32, "triplets per optimizer step (global batch)")
    mini_batch_size: int | None = option(
        None,
        "GradCache: embed at most this many texts per forward pass and hold only one chunk's "
        "graph (same gradients as the full batch, a second forward pass of cost)",
    )
    lr: float = option(5e-5, "peak learning rate (AdamW)")
    warmup: int = option(100, "linear warmup steps before cosine decay")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables)")
    loss: str = option("infonce", "loss function", choices=("infonce", "triplet"))
    temperature: float = option(0.05, "InfoNCE temperature")
    margin: float = option(0.2, "triplet loss margin on cosine distance")
    hard_negatives: bool = option(True, "use the hard_neg column as extra negatives")
    prompt: str | None = option(None, "prompt template around each text, containing {s}")
    pooling: str = option("last", "pooling of hidden states", choices=("last", "mean"))
    max_length: int = option(128, "max tokens per text, EOS included")
    dtype: str = option("bf16", "backbone dtype (LoRA weights stay fp32)", choices=("bf16", "fp32"))
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.1, "LoRA dropout")
    lora_targets: list[str] = option(["q_proj", "v_proj"], "linear modules to adapt")
    limit: int | None = option(None, "use only the first N triplets")
    seed: int = option(42, "seed for data order, LoRA init and dropout")
    save_every: int = option(100, "checkpoint every N steps (0: only at the end)")
    resume: bool = option(False, "continue from the checkpoint in --output")
    trust_remote_code: bool = option(False, "allow the model's own code (MiniCPM)")

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(
                    f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}"
                )
        if isinstance(self.lora_targets, str):
            self.lora_targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        if self.steps is None and self.epochs is None:
            raise ValueError("give steps or epochs")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 for in-batch negatives")
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise ValueError(
                f"mini_batch_size must be at least 1 (or unset to disable GradCache), "
                f"got {self.mini_batch_size}"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a config, naming any unknown option and the valid ones."""
    known = {f.name for f in fields(TrainConfig)}
    normalised = {str(key).replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(normalised) - known)
    if unknown:
        raise ValueError(
            f"{source}: unknown option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(sorted(known))}"
        )
    return TrainConfig(**normalised)


def load_config(path: str | Path | None, **overrides: Any) -> TrainConfig:
    """YAML file (optional) with ``overrides`` (the flags that were given) on top."""
    values: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of option: value")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values, source=str(path or "options"))
