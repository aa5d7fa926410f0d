"""GradCache: the same gradients as a full-graph batch, dropout on, in one chunk's memory."""

import pytest
import torch
from safetensors.torch import load_file
from training_checks import random_lora_embedder

from lmembed.data.triplets import load_triplets
from lmembed.losses import build_loss
from lmembed.training import gradcache
from lmembed.training.config import TrainConfig
from lmembed.training.distributed import Distributed
from lmembed.training.trainer import forward_backward, train

BATCH = 8


def _config(model, data, output="unused", **changes) -> TrainConfig:
    # Dropout 0.3 instead of 0.1 so that a wrong mask would move the gradients a lot.
    base = dict(
        model=str(model), data=str(data), output=str(output), dtype="fp32", lora_dropout=0.3,
        seed=0, steps=3, batch_size=BATCH, lr=1e-3, warmup=1, save_every=0,
    )  # fmt: skip
    return TrainConfig.from_flat(**{**base, **changes})


def _batch(data_path):
    data = load_triplets(str(data_path))
    return data.anchors[:BATCH], data.positives[:BATCH], data.negatives[:BATCH]


def _grads(embedder) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}
    embedder.zero_grad(set_to_none=True)
    return grads


def _loss_fn():
    return build_loss("infonce", 0.05, 0.2)


def _grad_cache_step(embedder, batch, mini_batch_size, seed=7):
    torch.manual_seed(seed)
    loss = forward_backward(embedder, _loss_fn(), batch, Distributed(), [BATCH], mini_batch_size)
    return loss.item(), _grads(embedder)


def _full_graph_step(embedder, batch, chunk_size, seed=7):
    """The plain full-batch loss, every text's graph alive at once (no GradCache).

    Dropout masks depend on how texts are grouped into forward passes, so the
    reference embeds in the same length-sorted chunks (``Embedder.embed`` with
    ``chunk_size``) from the same RNG state: then GradCache must reproduce it exactly.
    """
    torch.manual_seed(seed)
    anchors, positives, negatives = batch
    vectors = embedder.embed(anchors + positives + negatives, chunk_size=chunk_size)
    loss = _loss_fn()(vectors[:BATCH], vectors[BATCH : 2 * BATCH], vectors[2 * BATCH :])
    loss.backward()
    return loss.item(), _grads(embedder)


def _assert_same(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def test_mini_batch_2_matches_full_batch_of_8_with_dropout(tiny_llama, triplets_csv):
    embedder = random_lora_embedder(_config(tiny_llama, triplets_csv))
    batch = _batch(triplets_csv)
    loss, grads = _grad_cache_step(embedder, batch, mini_batch_size=2)
    ref_loss, ref_grads = _full_graph_step(embedder, batch, chunk_size=2)
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    _assert_same(grads, ref_grads)
    assert all(g.abs().max() > 1e-4 for g in grads.values()), "a LoRA gradient is ~zero"


def test_without_rng_replay_gradients_differ(tiny_llama, triplets_csv, monkeypatch):
    """The check above has teeth: skipping the RNG restore draws new masks."""
    embedder = random_lora_embedder(_config(tiny_llama, triplets_csv))
    batch = _batch(triplets_csv)
    _, ref_grads = _full_graph_step(embedder, batch, chunk_size=2)
    monkeypatch.setattr(gradcache.RngState, "restore", lambda self, device: None)
    _, grads = _grad_cache_step(embedder, batch, mini_batch_size=2)
    worst = max((grads[k] - ref_grads[k]).abs().max().item() for k in grads)
    assert worst > 1e-3


def test_chunk_of_whole_batch_equals_trainer_plain_path(tiny_llama, triplets_csv):
    """With M = batch the chunks are the plain path's, so gradients match it exactly."""
    embedder = random_lora_embedder(_config(tiny_llama, triplets_csv))
    batch = _batch(triplets_csv)
    loss, grads = _grad_cache_step(embedder, batch, mini_batch_size=BATCH)
    ref_loss, ref_grads = _grad_cache_step(embedder, batch, mini_batch_size=None)
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    _assert_same(grads, ref_grads)


@pytest.mark.parametrize(
    ("triplets", "mini_batch_size"),
    [(8, 2), (8, 3), (8, 5), (7, 2)],
    ids=["8-by-2", "8-by-3", "8-by-5-uneven", "7-by-2-uneven"],
)
def test_mini_batch_smaller_than_batch_gives_the_plain_path_gradients(
    tiny_llama, triplets_csv, triplets, mini_batch_size
):
    """GradCache with chunks smaller than the batch against the trainer's plain path
    (``mini_batch_size=None``: one graph over the whole batch, no GradCache): the same loss
    and the same gradient in every LoRA parameter. Dropout 0, since masks depend on how
    texts are grouped into passes; the comparison is of gradients, not of Adam steps, so
    a wrong scale of ``d loss / d embedding`` or a chunk left out of the replay shows."""
    embedder = random_lora_embedder(_config(tiny_llama, triplets_csv, lora_dropout=0.0))
    batch = tuple(texts[:triplets] for texts in _batch(triplets_csv))
    ids = embedder.tokenize(batch[0], role="query") + embedder.tokenize(
        batch[1] + batch[2], role="document"
    )
    sizes = [len(chunk) for chunk in embedder.chunks(ids, mini_batch_size)]
    assert len(sizes) > 2 and max(sizes) <= mini_batch_size
    if len(ids) % mini_batch_size:
        assert min(sizes) < mini_batch_size  # an uneven chunk is replayed too

    def step(mini_batch):
        torch.manual_seed(7)
        loss = forward_backward(embedder, _loss_fn(), batch, Distributed(), [triplets], mini_batch)
        return loss.item(), _grads(embedder)

    ref_loss, ref_grads = step(None)
    loss, grads = step(mini_batch_size)
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for key, ref in ref_grads.items():
        # fp32 rounding differs with the chunks' padding: ~1e-6 of the tensor's largest entry.
        scale = ref.abs().max().item()
        torch.testing.assert_close(
            grads[key], ref, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, k=key: f"{k}: {m}"
        )
    assert all(g.abs().max() > 1e-4 for g in ref_grads.values()), "a LoRA gradient is ~zero"


def test_training_with_mini_batch_size_equals_plain_training(tiny_llama, triplets_csv, tmp_path):
    """End to end through ``train``: the flag is wired, and the RNG stream continues
    across steps exactly as in a plain run (dropout on)."""
    plain = _config(tiny_llama, triplets_csv, tmp_path / "plain")
    train(plain)
    train(plain.replace(output=str(tmp_path / "cached"), mini_batch_size=BATCH))
    a = load_file(str(tmp_path / "plain" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "adapter_model.safetensors"))
    _assert_same(a, b, atol=1e-6)


def test_mini_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="mini_batch_size"):
        TrainConfig(mini_batch_size=0)
