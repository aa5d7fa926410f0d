"""Models: loading specs, the Embedder, pooling and LoRA."""

from lmembed.model.embedder import Embedder, EmbeddingSpec
from lmembed.model.loading import PACKAGED_MODELS, load_backbone
from lmembed.model.lora import attach_lora, merge_lora, save_adapter

__all__ = [
    "PACKAGED_MODELS",
    "Embedder",
    "EmbeddingSpec",
    "attach_lora",
    "load_backbone",
    "merge_lora",
    "save_adapter",
]
