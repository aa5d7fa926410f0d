"""Contrastive losses, one per file; each is a function of embeddings."""

from lmembed.losses.infonce import InfoNCELoss, info_nce
from lmembed.losses.triplet import TripletLoss, triplet_margin

__all__ = ["InfoNCELoss", "TripletLoss", "build_loss", "info_nce", "triplet_margin"]


def build_loss(name: str, temperature: float, margin: float) -> InfoNCELoss | TripletLoss:
    """The loss module a config names (``TrainConfig`` validates the combination)."""
    if name == "infonce":
        return InfoNCELoss(temperature)
    if name == "triplet":
        return TripletLoss(margin)
    raise ValueError(f"loss must be 'infonce' or 'triplet', got {name!r}")
