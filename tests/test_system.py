"""``accelerator()``: where inference and ablation scoring run."""

from __future__ import annotations

import torch

from lmembed import system


def test_accelerator_is_the_gpu_when_there_is_one(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert system.accelerator() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert system.accelerator() is None
