"""Matryoshka loss: hand computation, and the same gradients under GradCache and 2 processes
(around the paper's InfoNCE and the symmetric one, whose anchors are gathered too)."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmembed.losses import (
    InfoNCELoss,
    SymmetricInfoNCELoss,
    TripletLoss,
    info_nce,
    symmetric_info_nce,
)
from lmembed.losses.matryoshka import MatryoshkaLoss, matryoshka_loss
from lmembed.model import Embedder
from lmembed.training.distributed import (
    Distributed,
    average_gradients,
    global_batch_loss,
    mean_across,
)
from lmembed.training.gradcache import grad_cache_backward

DIMS, WEIGHTS = [32, 16, 4], [1.0, 0.5, 2.0]
WORLD = 2
INNER = {"infonce": InfoNCELoss, "symmetric": SymmetricInfoNCELoss}


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _hand_info_nce(q, p, n, t):
    total = 0.0
    for i in range(len(q)):
        logits = [_cos(q[i], c) / t for c in [*p, *n]]
        total += math.log(sum(math.exp(x) for x in logits)) - logits[i]
    return total / len(q)


def test_matryoshka_matches_hand_computation():
    torch.manual_seed(0)
    q, p, n = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 6)
    dims, weights = [6, 3, 2], [1.0, 0.5, 0.25]
    expected = sum(
        w * _hand_info_nce(q[:, :d], p[:, :d], n[:, :d], 0.05)
        for d, w in zip(dims, weights, strict=True)
    )
    got = MatryoshkaLoss(InfoNCELoss(0.05), dims, weights)(q, p, n)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Truncating without re-normalising would change nothing for cosine losses, but the
    # prefixes really are what the inner loss sees: 2 dims differ from 6 dims.
    assert got.item() != pytest.approx(1.75 * _hand_info_nce(q, p, n, 0.05), rel=1e-3)


def test_inner_loss_receives_unit_prefixes():
    seen = []

    def spy(anchors, positives, negatives):
        seen.append((anchors.shape[-1], anchors.norm(dim=-1), negatives))
        return anchors.sum() * 0

    matryoshka_loss(spy, torch.randn(2, 8) * 5, torch.randn(2, 8), None, dims=[8, 2])
    assert [dim for dim, _, _ in seen] == [8, 2]
    for _, norms, negatives in seen:
        torch.testing.assert_close(norms, torch.ones(2))
        assert negatives is None


def test_wraps_any_loss_with_several_negatives_per_anchor():
    torch.manual_seed(1)
    q, p, n = torch.randn(2, 8), torch.randn(2, 8), torch.randn(6, 8)
    got = matryoshka_loss(info_nce, q, p, n, dims=[8, 4], weights=[1, 1])
    short = info_nce(q[:, :4], p[:, :4], n[:, :4])
    assert got.item() == pytest.approx(info_nce(q, p, n).item() + short.item(), rel=1e-5)
    triplet = MatryoshkaLoss(TripletLoss(0.2), [8])(q, p, n[:2])
    assert triplet.item() == pytest.approx(TripletLoss(0.2)(q, p, n[:2]).item(), rel=1e-6)


def test_a_symmetric_inner_loss_sees_truncated_anchor_candidates():
    torch.manual_seed(2)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    wrapped = MatryoshkaLoss(SymmetricInfoNCELoss(0.05), [8, 3], [1.0, 0.5])
    assert wrapped.symmetric and not MatryoshkaLoss(InfoNCELoss(0.05), [8]).symmetric
    # A rank's view: 2 local anchors, the global batch's 4 anchors as candidates.
    got = wrapped(q[:2], p, n, anchor_candidates=q)
    expected = sum(
        w * symmetric_info_nce(q[:2, :d], p[:, :d], n[:, :d], 0.05, anchor_candidates=q[:, :d])
        for d, w in ((8, 1.0), (3, 0.5))
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_dims_and_weights_are_refused():
    q = torch.randn(2, 8)
    with pytest.raises(ValueError, match="exceed the embedding size 8"):
        matryoshka_loss(info_nce, q, q, dims=[16, 4])
    with pytest.raises(ValueError, match="distinct positive"):
        MatryoshkaLoss(InfoNCELoss(), [8, 8])
    with pytest.raises(ValueError, match="2 matryoshka weights for 3 dims"):
        MatryoshkaLoss(InfoNCELoss(), [8, 4, 2], [1, 1])
    with pytest.raises(ValueError, match="at least one size"):
        MatryoshkaLoss(InfoNCELoss(), [])


# --- the same loss inside GradCache and across processes --------------------------------

SUBJECTS = ["a man", "a woman", "the dog", "the cat", "two kids", "an old man", "a girl", "we"]
BATCH = [
    (f"{s} is running in the park .", f"{s} runs .", f"{s} is asleep at home .") for s in SUBJECTS
]


def _embedder(model_path) -> Embedder:
    torch.manual_seed(0)
    return Embedder.from_pretrained(model=str(model_path), dtype="fp32").train()


def _step(embedder, triplets, ctx, sizes, mini_batch_size, inner="infonce"):
    """This rank's objective and the rank-averaged gradients for its ``triplets``."""
    anchors, positives, negatives = (list(col) for col in zip(*triplets, strict=True))
    n = len(anchors)
    loss_fn = MatryoshkaLoss(INNER[inner](0.05), DIMS, WEIGHTS)

    def objective(vectors):
        return global_batch_loss(
            loss_fn, vectors[:n], vectors[n : 2 * n], vectors[2 * n :], ctx, sizes
        )

    ids = embedder.tokenize(anchors + positives + negatives)
    if mini_batch_size:
        loss = grad_cache_backward(embedder, ids, objective, mini_batch_size)
    else:
        loss = objective(embedder.embed_ids(ids))
        loss.backward()
    value = mean_across(loss, ctx)
    params = [p for p in embedder.parameters() if p.requires_grad]
    average_gradients(params, ctx)
    grads = {name: p.grad.clone() for name, p in embedder.named_parameters() if p.grad is not None}
    embedder.zero_grad(set_to_none=True)
    return value, grads


def _assert_same(a, b):
    """Equal to 1e-5 of each tensor's scale (the full model trains: embedding grads ~80)."""
    assert a.keys() == b.keys()
    for key in a:
        atol = 1e-5 * max(1.0, b[key].abs().max().item())
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("inner", sorted(INNER))
def test_grad_cache_gives_the_full_batch_gradients(tiny_llama, inner):
    embedder = _embedder(tiny_llama)
    loss, grads = _step(embedder, BATCH, Distributed(), [len(BATCH)], None, inner)
    cached_loss, cached = _step(embedder, BATCH, Distributed(), [len(BATCH)], 3, inner)
    # fp32 with other padding per chunk: 2.4e-6 apart on an AVX2 CPU, within 1e-6 on AVX-512
    assert cached_loss == pytest.approx(loss, abs=1e-5)
    _assert_same(cached, grads)
    assert max(g.abs().max() for g in grads.values()) > 1e-3


def _worker(rank, port, model_path, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)  # fmt: skip
    ctx = Distributed(rank, WORLD)
    embedder = _embedder(model_path)
    sizes = [5, 3]  # uneven on purpose
    mine = BATCH[:5] if rank == 0 else BATCH[5:]
    results = {
        (inner, name): _step(embedder, mine, ctx, sizes, m, inner)
        for inner in INNER
        for name, m in (("plain", None), ("gradcache", 2))
    }
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_single_process_loss_and_gradients(tiny_llama, tmp_path):
    mp.spawn(_worker, args=(_free_port(), tiny_llama, tmp_path), nprocs=WORLD)
    single = {
        inner: _step(_embedder(tiny_llama), BATCH, Distributed(), [len(BATCH)], None, inner)
        for inner in INNER
    }
    assert single["symmetric"][0] != pytest.approx(single["infonce"][0], rel=1e-3)
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(results) == 2 * len(INNER)
        for (inner, name), (rank_loss, rank_grads) in results.items():
            loss, grads = single[inner]
            assert rank_loss == pytest.approx(loss, abs=1e-5), (inner, name)
            _assert_same(rank_grads, grads)
