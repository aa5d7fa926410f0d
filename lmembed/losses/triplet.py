"""Triplet margin loss on cosine distance: the classic alternative to InfoNCE.

Each anchor only sees its own positive and hard negative (no in-batch
negatives): ``max(0, d(q, p) - d(q, n) + margin)`` with ``d = 1 - cos``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def triplet_margin(
    anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    d_pos = 1 - F.cosine_similarity(anchors.float(), positives.float(), dim=-1)
    d_neg = 1 - F.cosine_similarity(anchors.float(), negatives.float(), dim=-1)
    return F.relu(d_pos - d_neg + margin).mean()


class TripletLoss(torch.nn.Module):
    """``triplet_margin`` with its margin bound; anchor ``i`` uses rows ``i`` of each role."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(
        self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        rows = anchors.shape[0]
        return triplet_margin(anchors, positives[:rows], negatives[:rows], self.margin)
