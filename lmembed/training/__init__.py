"""Training: config, the loop, checkpoints and the batch sampler."""

from lmembed.training.config import TrainConfig, load_config
from lmembed.training.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
