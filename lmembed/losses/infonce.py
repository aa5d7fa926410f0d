"""InfoNCE over cosine similarities with in-batch and hard negatives (the paper's loss).

For anchor ``q_i`` the candidates are every positive ``p_j`` and, with hard
negatives, every negative ``n_j`` in the batch; the target is ``p_i``:

    loss_i = -log( exp(cos(q_i, p_i)/t) / sum_j [exp(cos(q_i, p_j)/t) + exp(cos(q_i, n_j)/t)] )

``info_nce`` works on embeddings only, so the multi-process and GradCache
trainers call it unchanged on gathered or cached embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine similarity, computed in fp32 for a stable softmax."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.05,
    positive_offset: int = 0,
) -> torch.Tensor:
    """Mean InfoNCE loss.

    ``positives``/``negatives`` may be longer than ``anchors`` (gathered from other
    processes); anchor ``i`` matches positive ``positive_offset + i``.
    """
    logits = cosine_matrix(anchors, positives)
    if negatives is not None:
        logits = torch.cat([logits, cosine_matrix(anchors, negatives)], dim=1)
    labels = torch.arange(anchors.shape[0], device=anchors.device) + positive_offset
    return F.cross_entropy(logits / temperature, labels)


class InfoNCELoss(torch.nn.Module):
    """``info_nce`` with its settings bound; ``forward`` takes (anchor, positive, negative)."""

    def __init__(self, temperature: float = 0.05, hard_negatives: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.hard_negatives = hard_negatives

    def forward(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor | None = None,
        positive_offset: int = 0,
    ) -> torch.Tensor:
        return info_nce(
            anchors,
            positives,
            negatives if self.hard_negatives else None,
            self.temperature,
            positive_offset,
        )
