"""The distillation loss against hand computations, and its contract with the trainer."""

import math

import numpy as np
import pytest
import torch

from lmembed.losses import (
    DistillationLoss,
    InfoNCELoss,
    TeacherRows,
    WithDistillation,
    distillation_loss,
    info_nce,
)

STUDENT_ANCHORS = [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]]
STUDENT_CANDIDATES = [[1.0, 1.0, 1.0], [0.0, 2.0, -1.0], [3.0, 0.0, 1.0], [-1.0, 0.5, 0.5]]
# A teacher of another width (2): only similarities are compared.
TEACHER_ANCHORS = [[1.0, 2.0], [-1.0, 0.5]]
TEACHER_CANDIDATES = [[2.0, 1.0], [0.0, 1.0], [1.0, -1.0], [-2.0, 1.0]]


def _tensor(rows, grad=False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, requires_grad=grad)


def _cosines(anchors, candidates) -> list[list[float]]:
    def norm(v):
        return math.sqrt(sum(x * x for x in v))

    return [
        [sum(x * y for x, y in zip(a, c, strict=True)) / (norm(a) * norm(c)) for c in candidates]
        for a in anchors
    ]


def _log_softmax(row, temperature) -> list[float]:
    logits = [x / temperature for x in row]
    top = max(logits)
    total = math.log(sum(math.exp(x - top) for x in logits)) + top
    return [x - total for x in logits]


def _hand_kl(student, teacher, temperature, teacher_temperature, skip_self=False) -> float:
    """KL(teacher || student) per row, averaged; ``skip_self`` drops column i of row i."""
    losses = []
    for i, (s_row, t_row) in enumerate(zip(student, teacher, strict=True)):
        if skip_self:
            s_row = [x for j, x in enumerate(s_row) if j != i]
            t_row = [x for j, x in enumerate(t_row) if j != i]
        log_s = _log_softmax(s_row, temperature)
        log_t = _log_softmax(t_row, teacher_temperature)
        losses.append(sum(math.exp(t) * (t - s) for s, t in zip(log_s, log_t, strict=True)))
    return sum(losses) / len(losses)


def test_kl_matches_a_hand_computation():
    student = _cosines(STUDENT_ANCHORS, STUDENT_CANDIDATES)
    teacher = _cosines(TEACHER_ANCHORS, TEACHER_CANDIDATES)
    expected = _hand_kl(student, teacher, temperature=0.1, teacher_temperature=0.2)
    loss = distillation_loss(
        _tensor(STUDENT_ANCHORS), _tensor(STUDENT_CANDIDATES),
        _tensor(TEACHER_ANCHORS), _tensor(TEACHER_CANDIDATES),
        kind="kl", temperature=0.1, teacher_temperature=0.2,
    )  # fmt: skip
    assert expected > 0.05
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mse_matches_a_hand_computation():
    student = _cosines(STUDENT_ANCHORS, STUDENT_CANDIDATES)
    teacher = _cosines(TEACHER_ANCHORS, TEACHER_CANDIDATES)
    pairs = zip(np.ravel(student), np.ravel(teacher), strict=True)
    squares = [(s - t) ** 2 for s, t in pairs]
    loss = distillation_loss(
        _tensor(STUDENT_ANCHORS), _tensor(STUDENT_CANDIDATES),
        _tensor(TEACHER_ANCHORS), _tensor(TEACHER_CANDIDATES), kind="mse",
    )  # fmt: skip
    assert loss.item() == pytest.approx(sum(squares) / len(squares), rel=1e-5)


def _hand_without_self(kind, student, teacher) -> float:
    """The loss of text-only rows by hand: row i's own column i is not a candidate."""
    if kind == "kl":
        return _hand_kl(student, teacher, 0.05, 0.05, skip_self=True)
    squares = [(student[i][j] - teacher[i][j]) ** 2
               for i in range(len(student)) for j in range(len(student[0])) if i != j]  # fmt: skip
    return sum(squares) / len(squares)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_text_only_rows_leave_each_text_out_of_its_own_row(kind):
    """Text-only data: the candidates are the texts themselves; column i of row i is not a
    candidate (it is 1 for both models)."""
    texts, teacher_texts = STUDENT_CANDIDATES, TEACHER_CANDIDATES
    student = _cosines(texts, texts)
    teacher = _cosines(teacher_texts, teacher_texts)
    module = DistillationLoss(kind, 0.05, 0.05)
    loss = module(_tensor(texts), None, None, TeacherRows(_tensor(teacher_texts), None, None))
    assert loss.item() == pytest.approx(_hand_without_self(kind, student, teacher), rel=1e-5)
    # One process's rows (the first two) as anchors; every text of the batch a candidate.
    everyone = TeacherRows(_tensor(teacher_texts[:2]), None, None, _tensor(teacher_texts))
    part = module(_tensor(texts[:2]), None, None, everyone, anchor_candidates=_tensor(texts))
    by_hand = _hand_without_self(kind, student[:2], teacher[:2])
    assert part.item() == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_gradients_flow_only_through_the_student(kind):
    student = (_tensor(STUDENT_ANCHORS, grad=True), _tensor(STUDENT_CANDIDATES, grad=True))
    teacher = (_tensor(TEACHER_ANCHORS, grad=True), _tensor(TEACHER_CANDIDATES, grad=True))
    distillation_loss(*student, *teacher, kind=kind).backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().max() > 1e-4 for s in student)


def test_kl_is_zero_when_student_equals_teacher_at_equal_temperatures():
    anchors, candidates = _tensor(STUDENT_ANCHORS), _tensor(STUDENT_CANDIDATES)
    same = distillation_loss(anchors, candidates, anchors, candidates, "kl", 0.05, 0.05)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    sharper = distillation_loss(anchors, candidates, anchors, candidates, "kl", 0.05, 0.02)
    assert sharper.item() > 1e-3  # other temperatures: other distributions


def test_a_teacher_of_another_width_is_compared_by_similarities_only():
    """A teacher whose vectors are the student's, rotated and embedded in 7 dimensions, has
    the same cosines: zero loss, whatever the widths."""
    anchors, candidates = _tensor(STUDENT_ANCHORS), _tensor(STUDENT_CANDIDATES)
    generator = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(7, 7, generator=generator))
    wider = rotation[:3]  # 3 orthonormal rows: an isometry from 3 to 7 dimensions
    for kind in ("kl", "mse"):
        loss = distillation_loss(anchors, candidates, anchors @ wider, candidates @ wider, kind)
        assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_the_module_scores_positives_then_negatives_as_infonce_does():
    """The candidates are InfoNCE's: every positive, then every hard negative."""
    anchors, positives = _tensor(STUDENT_ANCHORS), _tensor(STUDENT_CANDIDATES[:2])
    negatives = _tensor(STUDENT_CANDIDATES[2:])
    teacher = TeacherRows(
        _tensor(TEACHER_ANCHORS), _tensor(TEACHER_CANDIDATES[:2]), _tensor(TEACHER_CANDIDATES[2:])
    )
    module = DistillationLoss("kl", 0.1, 0.2)
    whole = distillation_loss(
        anchors, _tensor(STUDENT_CANDIDATES), teacher.anchors, _tensor(TEACHER_CANDIDATES),
        "kl", 0.1, 0.2,
    )  # fmt: skip
    assert module(anchors, positives, negatives, teacher).item() == pytest.approx(whole.item())
    combined = WithDistillation(InfoNCELoss(0.05), module, weight=0.5)
    total = combined(anchors, positives, negatives, teacher=teacher)
    expected = info_nce(anchors, positives, negatives, 0.05) + 0.5 * whole
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    alone = WithDistillation(None, module, weight=2.0)
    assert alone(anchors, positives, negatives, teacher=teacher).item() == pytest.approx(
        2 * whole.item(), rel=1e-6
    )


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="kind must be 'kl' or 'mse'"):
        DistillationLoss("cosine")
    with pytest.raises(ValueError, match="temperatures must be positive"):
        DistillationLoss("kl", 0.05, 0.0)
    with pytest.raises(ValueError, match="weight must be positive"):
        WithDistillation(None, DistillationLoss(), 0.0)
    with pytest.raises(ValueError, match="teacher's embeddings"):
        WithDistillation(None, DistillationLoss(), 1.0)(_tensor(STUDENT_ANCHORS), None)
    anchors = _tensor(STUDENT_ANCHORS)
    with pytest.raises(ValueError, match="student scores .* teacher scores"):
        distillation_loss(anchors, anchors, anchors[:1], anchors)


def test_hand_helpers_agree_with_numpy():
    """The loops above, checked once against a vectorised numpy computation."""
    s = np.array(_cosines(STUDENT_ANCHORS, STUDENT_CANDIDATES)) / 0.1
    t = np.array(_cosines(TEACHER_ANCHORS, TEACHER_CANDIDATES)) / 0.2
    log_s = s - np.log(np.exp(s).sum(1, keepdims=True))
    log_t = t - np.log(np.exp(t).sum(1, keepdims=True))
    numpy_kl = (np.exp(log_t) * (log_t - log_s)).sum(1).mean()
    hand = _hand_kl(
        _cosines(STUDENT_ANCHORS, STUDENT_CANDIDATES),
        _cosines(TEACHER_ANCHORS, TEACHER_CANDIDATES), 0.1, 0.2,
    )  # fmt: skip
    assert hand == pytest.approx(numpy_kl, rel=1e-9)
