"""lmembed: contrastive fine-tuning of small decoder LMs into text-embedding models."""

from lmembed.evaluation import evaluate
from lmembed.model import Embedder, EmbeddingSpec
from lmembed.training import TrainConfig, TrainResult, train

__version__ = "0.1.0"
__all__ = ["Embedder", "EmbeddingSpec", "TrainConfig", "TrainResult", "evaluate", "train"]
