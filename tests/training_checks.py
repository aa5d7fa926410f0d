"""Checks several training test files share: a crash-and-resume equality, random LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmembed.data.training import TrainingData
from lmembed.training.config import TrainConfig
from lmembed.training.run_dir import read_metrics
from lmembed.training.trainer import build_embedder, seed_everything, train


def crash_and_resume_matches(straight: TrainConfig, resumed: Path, monkeypatch) -> list[dict]:
    """Train ``straight``; train it again into ``resumed``, crash at step 4, refuse a
    restart without ``--resume``, resume: the adapters must be bit-identical and the log
    complete. Returns the resumed run's log."""
    train(straight)
    interrupted = straight.replace(output=str(resumed))
    original = TrainingData.batch

    def crash_at_step_4(self, step, batch_size, seed):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(self, step, batch_size, seed)

    with monkeypatch.context() as patch:
        patch.setattr(TrainingData, "batch", crash_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            train(interrupted)
    with pytest.raises(FileExistsError, match="--resume"):
        train(interrupted)
    train(interrupted.replace(resume=True))

    a = load_file(str(Path(straight.output) / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    log = read_metrics(resumed / "log.jsonl")
    assert [record["step"] for record in log] == list(range(1, int(straight.steps) + 1))
    return log


def random_lora_embedder(config: TrainConfig):
    """The embedder ``config`` trains, with random LoRA A *and* B (peft starts B at zero,
    which would zero A's gradient), the same for every call; in train mode."""
    seed_everything(config.seed)
    embedder = build_embedder(config)
    generator = torch.Generator().manual_seed(1)
    for param in embedder.parameters():
        if param.requires_grad:
            param.data = torch.randn(param.shape, generator=generator) * 0.1
    return embedder.train()
