"""Contrastive losses, one per file; each is a function of embeddings."""

from lmembed.losses.infonce import InfoNCELoss, info_nce
from lmembed.losses.triplet import TripletLoss, triplet_margin

__all__ = ["InfoNCELoss", "TripletLoss", "build_loss", "info_nce", "triplet_margin"]


def build_loss(
    name: str, temperature: float, hard_negatives: bool, margin: float
) -> InfoNCELoss | TripletLoss:
    if name == "infonce":
        return InfoNCELoss(temperature, hard_negatives)
    if name == "triplet":
        if not hard_negatives:
            raise ValueError("the triplet loss needs hard negatives (drop --no-hard-negatives)")
        return TripletLoss(margin)
    raise ValueError(f"loss must be 'infonce' or 'triplet', got {name!r}")
