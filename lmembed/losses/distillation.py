"""Distillation from a teacher embedder: match the student's in-batch similarities to its.

Each anchor is scored against the same candidate rows InfoNCE uses (every positive and
hard negative of the global batch; for text-only data, every other text of the batch),
once with the student's embeddings and once with the teacher's. Only the similarity
*matrices* are compared, never the vectors, so teacher and student widths may differ.

* ``kl``: KL(teacher || student) of the row softmaxes, mean over anchors. The student's
  cosines are divided by the training temperature, the teacher's by its own
  ``teacher_temperature``, as FlagEmbedding and sentence-transformers' ``DistillKLDivLoss``
  (student/teacher temperatures) do. No Hinton ``T**2`` factor: the student's logits are
  at the contrastive temperature, so ``d KL / d cos = (p_student - p_teacher) / T`` is on
  InfoNCE's own ``1 / T`` scale and ``--distill-weight 1`` weighs the two terms alike;
  ``T**2`` at ``T = 0.05`` would shrink the term 400-fold (FlagEmbedding leaves it out too).
* ``mse``: the mean squared difference of the two cosine matrices (no temperature).

With ``exclude_self`` (text-only data: the candidates are the anchors themselves, this
process's rows first) each anchor's own column ``i`` is left out of row ``i``: it is 1
for both models and says nothing.

The teacher's rows never get a gradient: they are fixed targets (precomputed vectors).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from lmembed.losses.infonce import cosine_matrix

DistillKind = Literal["kl", "mse"]


class TeacherRows(NamedTuple):
    """The teacher's embeddings of the rows the student embedded, role by role.

    ``positives`` is ``None`` for text-only data; ``anchor_candidates`` holds the global
    batch's anchors (this process's first) when the loss needs them as candidates.
    """

    anchors: torch.Tensor
    positives: torch.Tensor | None
    negatives: torch.Tensor | None
    anchor_candidates: torch.Tensor | None = None


def candidate_rows(
    anchors: torch.Tensor,
    positives: torch.Tensor | None,
    negatives: torch.Tensor | None = None,
    anchor_candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rows every anchor is scored against: positives then negatives (InfoNCE's
    candidates); for text-only data (no positives), the texts themselves."""
    if positives is None:
        return anchors if anchor_candidates is None else anchor_candidates
    return positives if negatives is None else torch.cat([positives, negatives])


def _without_self(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` (rows x candidates) without column ``i`` of row ``i``."""
    rows, columns = scores.shape
    keep = ~torch.eye(rows, columns, dtype=torch.bool, device=scores.device)
    return scores[keep].view(rows, columns - 1)


def distillation_loss(
    student_anchors: torch.Tensor,
    student_candidates: torch.Tensor,
    teacher_anchors: torch.Tensor,
    teacher_candidates: torch.Tensor,
    kind: DistillKind = "kl",
    temperature: float = 0.05,
    teacher_temperature: float = 0.05,
    exclude_self: bool = False,
) -> torch.Tensor:
    """How far the student's anchor-candidate similarities are from the teacher's (see the
    module docstring); row ``i`` of each pair of matrices is the same anchor."""
    student = cosine_matrix(student_anchors, student_candidates)
    teacher = cosine_matrix(teacher_anchors.detach(), teacher_candidates.detach())
    if student.shape != teacher.shape:
        raise ValueError(
            f"student scores {tuple(student.shape)} and teacher scores {tuple(teacher.shape)} "
            "differ: the teacher must embed the same anchors and candidates"
        )
    if exclude_self:
        student, teacher = _without_self(student), _without_self(teacher)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind != "kl":
        raise ValueError(f"distillation kind must be 'kl' or 'mse', got {kind!r}")
    return F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / teacher_temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


class DistillationLoss(torch.nn.Module):
    """``distillation_loss`` with its kind and temperatures bound; ``forward`` takes the
    student's (anchor, positive, negative) rows and the teacher's (``TeacherRows``)."""

    def __init__(
        self, kind: DistillKind = "kl", temperature: float = 0.05, teacher_temperature: float = 0.05
    ) -> None:
        super().__init__()
        if kind not in ("kl", "mse"):
            raise ValueError(f"distillation kind must be 'kl' or 'mse', got {kind!r}")
        if temperature <= 0 or teacher_temperature <= 0:
            raise ValueError(
                f"temperatures must be positive, got {temperature} and {teacher_temperature}"
            )
        self.kind = kind
        self.temperature = temperature
        self.teacher_temperature = teacher_temperature

    def forward(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor | None,
        negatives: torch.Tensor | None,
        teacher: TeacherRows,
        anchor_candidates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return distillation_loss(
            anchors,
            candidate_rows(anchors, positives, negatives, anchor_candidates),
            teacher.anchors,
            candidate_rows(*teacher),
            self.kind,
            self.temperature,
            self.teacher_temperature,
            exclude_self=positives is None,
        )


class WithDistillation(torch.nn.Module):
    """``contrastive`` (or nothing: distillation alone) plus ``weight`` x ``distillation``.

    Same call as the losses it wraps, plus the teacher's rows; ``symmetric`` is the
    contrastive loss's, so the multi-process loss gathers the anchors it needs.
    """

    def __init__(
        self, contrastive: torch.nn.Module | None, distillation: DistillationLoss, weight: float
    ) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"the distillation weight must be positive, got {weight}")
        self.contrastive = contrastive
        self.distillation = distillation
        self.weight = weight

    @property
    def symmetric(self) -> bool:
        return getattr(self.contrastive, "symmetric", False)

    def forward(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor | None,
        negatives: torch.Tensor | None = None,
        anchor_candidates: torch.Tensor | None = None,
        teacher: TeacherRows | None = None,
    ) -> torch.Tensor:
        if teacher is None:
            raise ValueError("distillation needs the teacher's embeddings of the same rows")
        loss = self.weight * self.distillation(
            anchors, positives, negatives, teacher, anchor_candidates
        )
        if self.contrastive is None:
            return loss
        if positives is None:
            raise ValueError("text-only data has no positives for a contrastive loss")
        extra = {"anchor_candidates": anchor_candidates} if self.symmetric else {}
        return loss + self.contrastive(anchors, positives, negatives, **extra)
