"""lmembed: contrastive fine-tuning of small decoder LMs into text-embedding models."""

from lmembed.evaluation import evaluate
from lmembed.model import Embedder, EmbeddingSpec
from lmembed.system import bound_kernel_cache
from lmembed.training import TrainConfig, TrainResult, train

bound_kernel_cache()  # importing runs no kernel; this must come before the first one

__version__ = "0.1.0"
__all__ = ["Embedder", "EmbeddingSpec", "TrainConfig", "TrainResult", "evaluate", "train"]
