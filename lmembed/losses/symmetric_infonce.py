"""Symmetric InfoNCE: the paper's loss plus its reverse direction, as CLIP trains.

Besides anchor ``q_i`` choosing its positive among all positives and hard negatives
(``info_nce``), each positive ``p_i`` chooses its anchor among all anchors:

    loss = ( info_nce(q, p, n) + info_nce(p, q) ) / 2

The reverse term reuses the same embeddings (one more B x B similarity matrix, no
forward pass), so every step gets more gradient for the same encoder cost. Hard
negatives are candidates of the forward term only: they are no anchor's partner.

The reverse term needs every anchor of the global batch as a candidate. In one process
those are the anchors themselves; across ranks ``distributed.global_batch_loss``
gathers them (this rank's rows first) and passes them as ``anchor_candidates``, because
the loss declares ``symmetric = True``.
"""

from __future__ import annotations

import torch

from lmembed.losses.infonce import InfoNCELoss, info_nce


def symmetric_info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 0.05,
    anchor_candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of InfoNCE both ways; ``anchor_candidates`` (default ``anchors``) holds this
    process's anchors first, then the rest of the global batch's."""
    candidates = anchors if anchor_candidates is None else anchor_candidates
    forward = info_nce(anchors, positives, negatives, temperature)
    reverse = info_nce(positives[: anchors.shape[0]], candidates, None, temperature)
    return (forward + reverse) / 2


class SymmetricInfoNCELoss(InfoNCELoss):
    """``symmetric_info_nce`` with its temperature (fixed or learned, as ``InfoNCELoss``)."""

    symmetric = True  # the multi-process loss passes the gathered anchors

    def forward(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor | None = None,
        anchor_candidates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return symmetric_info_nce(
            anchors, positives, negatives, self.temperature, anchor_candidates
        )
