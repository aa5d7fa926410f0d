"""InfoNCE over cosine similarities with in-batch and hard negatives (the paper's loss).

For anchor ``q_i`` the candidates are every positive ``p_j`` and, with hard
negatives, every negative ``n_j`` in the batch; the target is ``p_i``:

    loss_i = -log( exp(cos(q_i, p_i)/t) / sum_j [exp(cos(q_i, p_j)/t) + exp(cos(q_i, n_j)/t)] )

``info_nce`` works on embeddings only, so the multi-process and GradCache
trainers call it unchanged on gathered or cached embeddings. Every loss in this
package shares one contract: ``positives[i]`` is anchor ``i``'s positive, and
``positives``/``negatives`` may hold more rows than there are anchors (the rest
of a global batch, or several negatives per anchor); every row is a candidate.
Whether negatives are used at all is the trainer's decision (``hard_negatives``),
made once, by what it passes.

The temperature is fixed (the paper's 0.05) or learned, as CLIP learns it: the
parameter is the log of the inverse temperature, so optimizer steps are relative
changes, capped at CLIP's scale of 100 (temperature 0.01).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine similarity, computed in fp32 for a stable softmax."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 0.05,
) -> torch.Tensor:
    """Mean InfoNCE loss; anchor ``i``'s target is ``positives[i]``."""
    logits = cosine_matrix(anchors, positives)
    if negatives is not None:
        logits = torch.cat([logits, cosine_matrix(anchors, negatives)], dim=1)
    labels = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits / temperature, labels)


MAX_LOG_SCALE = math.log(100.0)  # CLIP's cap on the inverse temperature


class InfoNCELoss(torch.nn.Module):
    """``info_nce`` with its temperature bound; ``forward`` takes (anchor, positive, negative).

    With ``learnable``, the temperature starts at ``temperature`` and is a parameter of
    this module (``log_scale``) for the optimizer to train.
    """

    symmetric = False  # see ``SymmetricInfoNCELoss``

    def __init__(self, temperature: float = 0.05, learnable: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.initial_temperature = temperature
        self.log_scale = (
            torch.nn.Parameter(torch.tensor(-math.log(temperature))) if learnable else None
        )

    @property
    def temperature(self) -> float | torch.Tensor:
        if self.log_scale is None:
            return self.initial_temperature
        return torch.exp(-self.log_scale.clamp(max=MAX_LOG_SCALE))

    def forward(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return info_nce(anchors, positives, negatives, self.temperature)
