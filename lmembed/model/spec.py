"""``EmbeddingSpec``: everything that defines the embedding function, declared once.

The spec is saved with every adapter (``lmembed.json``) and every result, so a
number can be traced to what produced it. Its fields are the embedding flags of
every command (``train``, ``eval``, ``encode``, ``serve``, ``export``, ``ablate``):
a new option added here reaches all of them.

One rule decides the spec a command uses (``lmembed.model.resolve.resolve_spec``):
the defaults, then a packaged model's own defaults, then the spec saved with the
adapter (or a merged export), then the options the user gave explicitly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lmembed.io import atomic_write_json
from lmembed.options import check_choices, option
from lmembed.system import native_bf16

SPEC_FILE = "lmembed.json"
Pooling = Literal["last", "mean"]
Attention = Literal["causal", "bidirectional"]
DType = Literal["auto", "bf16", "fp32", "fp16"]
Role = Literal["query", "document"]
ROLES: tuple[Role, ...] = ("query", "document")
DEFAULT_MAX_LENGTH = 128
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(dtype: str) -> str:
    """``dtype`` with ``"auto"`` made concrete: bf16 where the hardware computes it (CUDA,
    CPUs with AVX512-BF16 or AMX), else fp32. The one place ``"auto"`` is decided."""
    if dtype == "auto":
        return "bf16" if native_bf16() else "fp32"
    return dtype


@dataclass
class EmbeddingSpec:
    """The embedding function: model (+ adapter), prompts, pooling, attention, length, dtype."""

    model: str = option("gemma-3-270m", "model: packaged alias, .gguf, folder or hub id")
    adapter: str | None = option(
        None, "trained adapter folder (lmembed train --output); restores its saved options"
    )
    prompt: str | None = option(
        None, "prompt template around every text, containing {s}, e.g. '{s} is: '"
    )
    query_prompt: str | None = option(
        None, "template for queries/anchors (default: --prompt); asymmetric retrieval"
    )
    document_prompt: str | None = option(
        None, "template for documents/positives/negatives (default: --prompt)"
    )
    pooling: Pooling = option("last", "pooling of the last hidden states: last token or mean")
    attention: Attention = option(
        "causal",
        "causal: each token sees those before it (the paper's; how the model was pretrained); "
        "bidirectional: every token sees every real token, as LLM2Vec and EmbeddingGemma do "
        "(usually with --pooling mean)",
    )
    max_length: int = option(DEFAULT_MAX_LENGTH, "max tokens per text, EOS included")
    dtype: DType = option(
        "auto",
        "backbone dtype (LoRA weights train in fp32); auto: bf16 where the hardware computes "
        "it (CUDA, CPUs with AVX512-BF16 or AMX), else fp32, several times faster than "
        "emulated bf16. The spec records the dtype auto chose. --backend onnx|openvino run "
        "the fp32 graph whatever --dtype says (OpenVINO's compute precision is "
        "--runtime-precision)",
    )
    append_eos: bool = option(True, "append the EOS token to every text (the paper's recipe)")
    trust_remote_code: bool = option(False, "allow the model's own code (MiniCPM)")
    matryoshka_dims: list[int] = option(
        [],
        "sizes the embedding was trained to keep working at when truncated (train: the "
        "Matryoshka loss sums InfoNCE over these prefixes, e.g. 640,256,128,64)",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        self.dtype = resolve_dtype(self.dtype)
        for name in ("prompt", "query_prompt", "document_prompt"):
            template = getattr(self, name)
            if template is not None and "{s}" not in template:
                raise ValueError(f"{name} template must contain '{{s}}', got {template!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if isinstance(self.matryoshka_dims, str):
            self.matryoshka_dims = [int(d) for d in self.matryoshka_dims.split(",") if d.strip()]

    def template(self, role: Role | None = None) -> str | None:
        """The prompt template for texts of ``role`` (``None``: the symmetric prompt)."""
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")
        specific = {"query": self.query_prompt, "document": self.document_prompt}.get(role)
        return specific if specific is not None else self.prompt

    def replace(self, **changes: Any) -> EmbeddingSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingSpec:
        """Ignores unknown keys: a spec saved by a newer lmembed still loads."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def save(self, folder: str | Path) -> None:
        atomic_write_json(Path(folder) / SPEC_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingSpec:
        path = Path(folder) / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not an lmembed adapter folder: no {SPEC_FILE}")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
