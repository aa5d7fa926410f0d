import math

import pytest
import torch

from lmembed.losses import (
    InfoNCELoss,
    SymmetricInfoNCELoss,
    TripletLoss,
    build_loss,
    info_nce,
    symmetric_info_nce,
    triplet_margin,
)
from lmembed.training.config import TrainConfig
from lmembed.training.distributed import local_rows_first


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _hand_info_nce(q, p, n, t):
    total = 0.0
    for i in range(len(q)):
        candidates = [_cos(q[i], p[j]) for j in range(len(p))]
        if n is not None:
            candidates += [_cos(q[i], n[j]) for j in range(len(n))]
        denominator = sum(math.exp(c / t) for c in candidates)
        total += -math.log(math.exp(_cos(q[i], p[i]) / t) / denominator)
    return total / len(q)


@pytest.mark.parametrize("hard_negatives", [True, False])
def test_info_nce_matches_hand_computation(hard_negatives):
    torch.manual_seed(0)
    q, p, n = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    expected = _hand_info_nce(q, p, n if hard_negatives else None, 0.05)
    got = InfoNCELoss(0.05)(q, p, n if hard_negatives else None)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_with_several_negatives_per_anchor_matches_hand_computation():
    torch.manual_seed(2)
    q, p, n = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3 * 4, 4)  # 4 negatives each
    assert info_nce(q, p, n, 0.05).item() == pytest.approx(_hand_info_nce(q, p, n, 0.05), rel=1e-5)


def test_local_rows_first_selects_global_positive():
    torch.manual_seed(1)
    q, p = torch.randn(2, 4), torch.randn(6, 4)
    rotated = info_nce(q, local_rows_first(p, offset=2))
    reordered = info_nce(q, torch.cat([p[2:4], p[:2], p[4:]]))
    assert rotated.item() == pytest.approx(reordered.item(), rel=1e-6)


def test_triplet_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    n = torch.tensor([[1.0, 0.1], [1.0, 0.0]])
    expected = [max(0.0, (1 - _cos(q[i], p[i])) - (1 - _cos(q[i], n[i])) + 0.2) for i in range(2)]
    assert triplet_margin(q, p, n, 0.2).item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert TripletLoss(0.2)(q, p, n).item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_loss_options_are_validated():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)
    with pytest.raises(ValueError, match="hard negatives"):
        TrainConfig(loss="triplet", hard_negatives=False)
    with pytest.raises(ValueError, match="infonce"):
        build_loss("cosent", 0.05, 0.2)


def test_learned_temperature_starts_at_the_given_one_and_its_gradient_sharpens_a_right_ranking():
    torch.manual_seed(3)
    q = torch.randn(4, 8)
    p = q + 0.1 * torch.randn(4, 8)  # every anchor's own positive ranks first
    n = torch.randn(4, 8)
    loss_fn = InfoNCELoss(0.05, learnable=True)
    assert [name for name, _ in loss_fn.named_parameters()] == ["log_scale"]
    loss = loss_fn(q, p, n)
    assert loss.item() == pytest.approx(_hand_info_nce(q, p, n, 0.05), rel=1e-4)  # exp(log t)
    loss.backward()
    # A colder softmax lowers the loss when the ranking is right: descent raises the scale.
    assert loss_fn.log_scale.grad < 0
    with torch.no_grad():
        loss_fn.log_scale.fill_(10.0)
    assert float(loss_fn.temperature) == pytest.approx(0.01)  # CLIP's cap
    assert list(InfoNCELoss(0.05).parameters()) == []


def test_a_learned_temperature_needs_infonce():
    with pytest.raises(ValueError, match="infonce"):
        TrainConfig(loss="triplet", temperature_lr=1e-2)
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(temperature_lr=0.0)
    with pytest.raises(ValueError, match="no temperature"):
        build_loss("triplet", 0.05, 0.2, learn_temperature=True)


def test_symmetric_info_nce_is_the_mean_of_both_directions_by_hand():
    torch.manual_seed(4)
    q, p, n = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    forward = _hand_info_nce(q, p, n, 0.05)  # anchors choose among positives and negatives
    reverse = _hand_info_nce(p, q, None, 0.05)  # positives choose among the anchors only
    got = build_loss("symmetric-infonce", 0.05, 0.2)(q, p, n)
    assert got.item() == pytest.approx((forward + reverse) / 2, rel=1e-5)
    assert got.item() != pytest.approx(InfoNCELoss(0.05)(q, p, n).item(), rel=1e-3)


def test_symmetric_info_nce_scores_local_positives_against_every_given_anchor():
    """A rank's view: 2 local anchors, the global batch's 5 positives and 5 anchors (local
    rows first); the reverse term picks each local positive's anchor among all 5."""
    torch.manual_seed(5)
    q, p = torch.randn(5, 4), torch.randn(5, 4)
    got = symmetric_info_nce(q[:2], p, None, 0.05, anchor_candidates=q)
    reverse = _hand_info_nce(p[:2], q, None, 0.05)
    assert got.item() == pytest.approx((_hand_info_nce(q[:2], p, None, 0.05) + reverse) / 2)
    learned = SymmetricInfoNCELoss(0.05, learnable=True)
    assert learned.symmetric and not InfoNCELoss(0.05).symmetric
    assert learned(q, p).item() == pytest.approx(symmetric_info_nce(q, p).item(), rel=1e-4)
