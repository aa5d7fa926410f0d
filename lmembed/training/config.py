"""``TrainConfig``: every training option, typed, with help text (peft-style).

The config nests the embedding recipe (``EmbeddingSpec``: model, prompts, pooling,
length, dtype) and the LoRA options (``LoraOptions``); users see all options flat
(``--prompt``, ``--lora-r``; YAML ``prompt:``, ``lora_r:`` or ``lora: {r: 8}``).
Precedence: dataclass defaults < YAML file (``--config``) < command-line flags,
and with ``adapter`` set, the adapter's saved spec fills the embedding options
that neither gives (``resolve_spec``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from lmembed.data.training import DataOptions
from lmembed.losses.matryoshka import check_dims
from lmembed.model.lora import LoraOptions
from lmembed.model.resolve import resolve_spec
from lmembed.model.spec import EmbeddingSpec
from lmembed.options import build, check_choices, flat_dict, flat_fields, nested, option
from lmembed.training.evaluator import EvalDuringTraining
from lmembed.training.teacher import DistillOptions
from lmembed.training.trackers import check_trackers


@dataclass
class TrainConfig:
    """Options for ``lmembed train``; defaults follow the paper."""

    embedding: EmbeddingSpec = nested(EmbeddingSpec, prefix="", help="the embedding function")
    dataset: DataOptions = nested(DataOptions, prefix="", help="the training data")
    output: str = option(
        "", "output folder: adapter, model card, logs, report, checkpoint (docs/training.md)"
    )
    steps: int | None = option(1000, "optimizer steps (ignored when --epochs is given)")
    epochs: float | None = option(None, "train for this many passes over the data instead")
    batch_size: int = option(32, "examples per optimizer step (global batch)")
    mini_batch_size: int | None = option(
        None,
        "GradCache: embed at most this many texts per forward pass and hold only one chunk's "
        "graph (same gradients as the full batch, a second forward pass of cost)",
    )
    activation_checkpointing: int = option(
        0,
        "hold only every N-th decoder layer's input in the forward pass and recompute that "
        "layer's activations in the backward pass (1: every layer; 0: off): training memory "
        "falls to about one layer's activations, at the cost of one more forward pass "
        "through the checkpointed layers; the gradients are the same",
    )
    lr: float = option(5e-5, "peak learning rate (AdamW)")
    warmup: int = option(100, "linear warmup steps before cosine decay")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables)")
    loss: Literal["infonce", "symmetric-infonce", "triplet", "none"] = option(
        "infonce",
        "loss function: infonce (the paper's); symmetric-infonce (also each positive "
        "against all anchors, as CLIP; no extra forward pass); triplet (margin, no in-batch "
        "negatives); none (distillation alone, with --teacher; also trains on text-only data)",
    )
    temperature: float = option(0.05, "InfoNCE temperature (the start value with --temperature-lr)")
    temperature_lr: float | None = option(
        None,
        "learn the InfoNCE temperature, as CLIP does, with this peak learning rate (its log "
        "is trained, no weight decay, same schedule; capped at 0.01); fixed when unset. "
        "Steps move log(temperature) by about this much each, so short runs need e.g. 1e-2",
    )
    margin: float = option(0.2, "triplet loss margin on cosine distance")
    hard_negatives: bool = option(True, "use the data's negatives as extra candidates")
    matryoshka_weights: list[float] = option(
        [], "weight of each --matryoshka-dims size in the summed loss (default: all 1)"
    )
    ema_decay: float | None = option(
        None,
        "weight averaging: keep a bias-corrected exponential moving average of the LoRA "
        "weights (window about 1/(1-decay) steps) and save it as the adapter; the last "
        "step's weights go to OUTPUT/last-step. Off when unset",
    )
    distill: DistillOptions = nested(DistillOptions, prefix="", help="distillation from a teacher")
    lora: LoraOptions = nested(LoraOptions, prefix="lora", help="the LoRA adapter")
    compile: bool = option(
        False,
        "torch.compile the backbone (inductor, dynamic shapes): fuses the elementwise work "
        "between matmuls after minutes of compiling, so it pays off only on long runs "
        "(measurements: docs/benchmarks.md); needs a C++ compiler. Dropout masks then come "
        "from inductor's generator: same distribution, not the eager run's draws",
    )
    attn_implementation: Literal["auto", "sdpa", "eager"] = option(
        "auto",
        "the backbone's attention kernel while training (the same math); auto: eager when "
        "training in bf16 on a CPU, where it measured faster for short texts "
        "(docs/benchmarks.md), else the kernel transformers loads (sdpa)",
    )
    evaluation: EvalDuringTraining = nested(
        EvalDuringTraining, prefix="", help="scoring while training, the best step, early stopping"
    )
    report_to: list[str] = option(
        ["jsonl"],
        "where metrics go, a comma list of: jsonl (the run's log.jsonl and eval.jsonl, always "
        "written), tensorboard (OUTPUT/tensorboard), mlflow (--mlflow-uri); tensorboard and "
        "mlflow need lmembed[track]",
    )
    mlflow_uri: str | None = option(
        None,
        "MLflow tracking URI for --report-to mlflow; unset: a SQLite store in OUTPUT/mlruns",
    )
    seed: int = option(42, "seed for data order, LoRA init and dropout")
    save_every: int = option(100, "checkpoint every N steps (0: only at the end)")
    resume: bool = option(False, "continue from the checkpoint in --output")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.steps is None and self.epochs is None:
            raise ValueError("give steps or epochs")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 for in-batch negatives")
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise ValueError(
                f"mini_batch_size must be at least 1 (or unset to disable GradCache), "
                f"got {self.mini_batch_size}"
            )
        if self.activation_checkpointing < 0:
            raise ValueError(
                "activation_checkpointing must be >= 0 (0: off), "
                f"got {self.activation_checkpointing}"
            )
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.temperature_lr is not None:
            if self.temperature_lr <= 0:
                raise ValueError(f"temperature_lr must be positive, got {self.temperature_lr}")
            if self.loss in ("triplet", "none"):
                raise ValueError(f"--temperature-lr needs an infonce loss, not {self.loss}")
        if self.loss == "none":
            self._check_distillation_alone()
        if self.embedding.matryoshka_dims:
            check_dims(self.embedding.matryoshka_dims, self.matryoshka_weights or None)
        elif self.matryoshka_weights:
            raise ValueError("--matryoshka-weights needs --matryoshka-dims")
        check_trackers(self.report_to)
        if self.loss == "triplet" and not self.hard_negatives:
            raise ValueError("the triplet loss needs hard negatives (drop --no-hard-negatives)")

    def _check_distillation_alone(self) -> None:
        if not self.distill.enabled:
            raise ValueError(
                "--loss none trains by distillation alone: give a teacher (--teacher MODEL)"
            )
        if self.embedding.matryoshka_dims:
            raise ValueError(
                "--matryoshka-dims sums the contrastive loss over prefixes; --loss none has "
                "none: pick a contrastive --loss, or drop --matryoshka-dims"
            )

    @classmethod
    def from_flat(cls, **options: Any) -> TrainConfig:
        """A config from flat option names (``lr=``, ``prompt=``, ``lora_r=``)."""
        return build(cls, options, source="options")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with flat options changed (``config.replace(prompt=..., lora_r=4)``)."""
        return build(type(self), changes, source="options", base=self)

    def to_dict(self) -> dict[str, Any]:
        """Flat ``{option: value}``: what ``train_config.json`` and YAML files hold."""
        return flat_dict(self)


def option_names() -> list[str]:
    """Every flat training option name (the YAML keys and, with dashes, the flags)."""
    return [flat.name for flat in flat_fields(TrainConfig)]


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a config, naming any unknown option and the valid ones.

    With an ``adapter``, the embedding options not in ``values`` come from its saved spec.
    """
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    embedding_keys = [f.name for f in dataclasses.fields(EmbeddingSpec)]
    if values.get("adapter") is not None:
        given = {key: values[key] for key in embedding_keys if key in values}
        values.update(resolve_spec(given).to_dict())
    return build(TrainConfig, values, source=source)


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
