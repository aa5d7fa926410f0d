"""Matryoshka representation learning (Kusupati et al., 2022) over any embedding loss.

The inner loss is applied to the first ``d`` coordinates of every embedding,
re-normalised, for each ``d`` in ``dims``, and the results are summed with
``weights``:

    loss = sum_k w_k * inner(norm(q[:, :d_k]), norm(p[:, :d_k]), norm(n[:, :d_k]))

so the leading coordinates alone make a good embedding and users can truncate
vectors at any of ``dims``. Only the embeddings change, never the call: the
multi-process gather and GradCache pass the full vectors and the wrapper slices
them inside the loss, so their gradients flow through every truncation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]


def check_dims(dims: Sequence[int], weights: Sequence[float] | None = None) -> list[float]:
    """Validate ``dims`` (distinct, positive) and return the weights (default all 1)."""
    if not dims:
        raise ValueError("matryoshka dims must list at least one size, e.g. 640,256,128,64")
    if any(int(d) != d or d < 1 for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"matryoshka dims must be distinct positive integers, got {list(dims)}")
    weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
    if len(weights) != len(dims):
        raise ValueError(f"{len(weights)} matryoshka weights for {len(dims)} dims; give one each")
    if any(w < 0 for w in weights) or not any(weights):
        raise ValueError(f"matryoshka weights must be non-negative, not all zero, got {weights}")
    return weights


def _prefix(vectors: torch.Tensor | None, dim: int) -> torch.Tensor | None:
    return None if vectors is None else F.normalize(vectors[..., :dim].float(), dim=-1)


def matryoshka_loss(
    loss_fn: LossFn,
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    dims: Sequence[int],
    weights: Sequence[float] | None = None,
    anchor_candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted sum of ``loss_fn`` on the truncated, re-normalised embeddings
    (``anchor_candidates`` too, for a symmetric inner loss)."""
    weights = check_dims(dims, weights)
    size = anchors.shape[-1]
    too_big = [d for d in dims if d > size]
    if too_big:
        raise ValueError(f"matryoshka dims {too_big} exceed the embedding size {size}")
    total = anchors.new_zeros((), dtype=torch.float32)
    for dim, weight in zip(dims, weights, strict=True):
        if weight:
            parts = (_prefix(anchors, dim), _prefix(positives, dim), _prefix(negatives, dim))
            extra = {}
            if anchor_candidates is not None:
                extra["anchor_candidates"] = _prefix(anchor_candidates, dim)
            total = total + weight * loss_fn(*parts, **extra)
    return total


class MatryoshkaLoss(torch.nn.Module):
    """``inner`` summed over truncations; same ``forward`` as the losses it wraps."""

    def __init__(
        self,
        inner: torch.nn.Module | LossFn,
        dims: Sequence[int],
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.weights = check_dims(dims, weights)
        self.inner = inner
        self.dims = [int(d) for d in dims]

    @property
    def symmetric(self) -> bool:
        """Whether the inner loss needs the global batch's anchors (``anchor_candidates``)."""
        return getattr(self.inner, "symmetric", False)

    def forward(self, *embeddings: torch.Tensor | None, **candidates: torch.Tensor) -> torch.Tensor:
        """The wrapped loss's call: (anchors, positives[, negatives]), and for a symmetric
        inner loss ``anchor_candidates``, each cut to every size."""
        dims, weights = self.dims, self.weights
        return matryoshka_loss(self.inner, *embeddings, dims=dims, weights=weights, **candidates)
