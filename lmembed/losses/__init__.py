"""Embedding losses, one per file; each is a function of embeddings (contrastive ones, and
distillation from a teacher's embeddings)."""

from collections.abc import Sequence

import torch

from lmembed.losses.distillation import (
    DistillationLoss,
    TeacherRows,
    WithDistillation,
    distillation_loss,
)
from lmembed.losses.infonce import InfoNCELoss, info_nce
from lmembed.losses.matryoshka import MatryoshkaLoss, matryoshka_loss
from lmembed.losses.symmetric_infonce import SymmetricInfoNCELoss, symmetric_info_nce
from lmembed.losses.triplet import TripletLoss, triplet_margin

__all__ = [
    "DistillationLoss",
    "InfoNCELoss",
    "MatryoshkaLoss",
    "SymmetricInfoNCELoss",
    "TeacherRows",
    "TripletLoss",
    "WithDistillation",
    "build_loss",
    "distillation_loss",
    "info_nce",
    "matryoshka_loss",
    "symmetric_info_nce",
    "triplet_margin",
]


def build_loss(
    name: str,
    temperature: float,
    margin: float,
    matryoshka_dims: Sequence[int] = (),
    matryoshka_weights: Sequence[float] | None = None,
    learn_temperature: bool = False,
) -> torch.nn.Module:
    """The loss module a config names (``TrainConfig`` validates the combination);
    with ``matryoshka_dims``, summed over those truncations."""
    if name == "infonce":
        loss: torch.nn.Module = InfoNCELoss(temperature, learn_temperature)
    elif name == "symmetric-infonce":
        loss = SymmetricInfoNCELoss(temperature, learn_temperature)
    elif name == "triplet":
        if learn_temperature:
            raise ValueError("the triplet loss has no temperature to learn; use infonce")
        loss = TripletLoss(margin)
    else:
        raise ValueError(f"loss must be 'infonce', 'symmetric-infonce' or 'triplet', got {name!r}")
    if matryoshka_dims:
        return MatryoshkaLoss(loss, matryoshka_dims, matryoshka_weights or None)
    return loss
