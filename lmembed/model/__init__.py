"""Models: loading specs, the embedding spec, the Embedder, pooling and LoRA."""

from lmembed.model.embedder import Embedder
from lmembed.model.loading import PACKAGED_MODELS, load_backbone
from lmembed.model.lora import LoraOptions, attach_lora
from lmembed.model.resolve import resolve_spec
from lmembed.model.spec import EmbeddingSpec

__all__ = [
    "PACKAGED_MODELS",
    "Embedder",
    "EmbeddingSpec",
    "LoraOptions",
    "attach_lora",
    "load_backbone",
    "resolve_spec",
]
