"""The LoRA step candidates (bench/lora_candidates.py): ``FastDropout`` gives torch dropout's
distribution from a quarter of the random draws; ``compute_in_base_dtype`` runs the adapter
in bf16 with fp32 weights. Both reach every LoRA layer, and GradCache's replay and an
interrupted run's resume stay exact with them."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer
from training_checks import crash_and_resume_matches
from transformers import AutoModel, AutoModelForCausalLM

from bench.lora_candidates import (  # noqa: E402
    BaseDtypeLinear,
    FastDropout,
    compute_in_base_dtype,
    lora_dropouts,
    use_fast_dropout,
)
from lmembed.data.triplets import load_triplets
from lmembed.losses import build_loss
from lmembed.model.lora import LoraOptions, attach_lora, save_adapter
from lmembed.training import trainer as trainer_module
from lmembed.training.config import TrainConfig
from lmembed.training.distributed import Distributed
from lmembed.training.trainer import build_embedder, forward_backward, seed_everything


def _config(model, data, output="unused", **changes) -> TrainConfig:
    base = dict(
        model=str(model), data=str(data), output=str(output), steps=4, batch_size=8, lr=1e-3,
        warmup=1, dtype="fp32", save_every=2, seed=0,
    )  # fmt: skip
    return TrainConfig.from_flat(**{**base, **changes})


# FastDropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_every_lane_drops_with_probability_p(p):
    """Each int64 draw feeds four int16 lanes: three signed, the top one with a random bit
    fewer; without the 15-bit mask, lane positions would drop at different rates."""
    torch.manual_seed(0)
    lanes = FastDropout.LANES
    out = FastDropout(p).train()(torch.ones(lanes * 250_000)).view(-1, lanes)
    dropped = (out == 0).double().mean(dim=0)
    sd = (p * (1 - p) / out.shape[0]) ** 0.5
    torch.testing.assert_close(dropped, torch.full_like(dropped, p), rtol=0, atol=5 * sd)


def test_kept_values_are_rescaled_so_the_mean_is_unchanged_and_gradients_follow_the_mask():
    torch.manual_seed(0)
    dropout = FastDropout(0.3).train()
    x = torch.randn(3, 5, 7, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    scale = FastDropout.LEVELS / dropout.threshold
    torch.testing.assert_close(y[kept], x[kept] * scale)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)
    assert y.shape == x.shape and 0 < kept.float().mean() < 1


def test_eval_mode_and_p_zero_are_the_identity():
    x = torch.randn(4, 9)
    assert FastDropout(0.1).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout p"):
        FastDropout(1.0)


def test_same_seed_gives_the_same_mask():
    x = torch.ones(1000)
    torch.manual_seed(3)
    a = FastDropout(0.1).train()(x)
    torch.manual_seed(3)
    b = FastDropout(0.1).train()(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("fast", [False, True])
def test_use_fast_dropout_swaps_every_lora_dropout(tiny_llama, fast):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft_model = attach_lora(model, LoraOptions(targets=["q_proj", "v_proj"]))
    if fast:
        use_fast_dropout(peft_model)
    dropouts = [slot[name] for slot, name in lora_dropouts(peft_model)]
    assert len(dropouts) == 2 * model.config.num_hidden_layers
    kinds = {type(d) for d in dropouts}
    assert kinds == ({FastDropout} if fast else {torch.nn.Dropout})
    assert all(d.p == 0.1 for d in dropouts)


@pytest.mark.parametrize("adapter", [False, True], ids=["new-lora", "continued-adapter"])
def test_candidates_reach_every_lora_layer(tiny_llama, triplets_csv, tmp_path, adapter):
    """Applied to the trainer's embedder, both candidates reach every LoRA layer, of a new
    LoRA and of an adapter trained further."""
    config = _config(tiny_llama, triplets_csv, tmp_path / "run")
    if adapter:
        plain = build_embedder(config)
        save_adapter(plain.model, plain.spec, tmp_path / "adapter")
        config = config.replace(adapter=str(tmp_path / "adapter"))
    embedder = build_embedder(config)
    use_fast_dropout(embedder)
    compute_in_base_dtype(embedder)
    dropouts = [slot[name] for slot, name in lora_dropouts(embedder.model)]
    assert dropouts and all(isinstance(d, FastDropout) and d.p == 0.1 for d in dropouts)
    layers = [m for m in embedder.model.modules() if isinstance(m, LoraLayer)]
    factors = [f for m in layers for f in (*m.lora_A.values(), *m.lora_B.values())]
    assert len(factors) == 2 * len(dropouts)
    assert all(type(f) is BaseDtypeLinear for f in factors)
    assert not any(m.cast_input_dtype_enabled for m in layers)


# LoRA in the base dtype


def _lora_pair(path: str, dtype: torch.dtype) -> tuple:
    """The same random LoRA (A and B nonzero, dropout 0) on two copies of a base: as peft
    computes it, and with ``compute_in_base_dtype``."""
    models = []
    for fast in (False, True):
        torch.manual_seed(0)
        base = AutoModel.from_pretrained(path, dtype=dtype)
        model = attach_lora(base, LoraOptions(targets=["all-linear"], dropout=0.0))
        if fast:
            compute_in_base_dtype(model)
        models.append(model)
    generator = torch.Generator().manual_seed(1)
    for (_, a), (_, b) in zip(*(m.named_parameters() for m in models), strict=True):
        if a.requires_grad:
            a.data = torch.randn(a.shape, generator=generator) * 0.05
            b.data = a.data.clone()
    return models


def _factor_inputs(model) -> list[torch.dtype]:
    """Run the model once; the dtype each LoRA A factor saw."""
    seen = []
    hooks = [
        layer.lora_A["default"].register_forward_hook(
            lambda m, args, out: seen.append(args[0].dtype)
        )
        for layer in model.modules()
        if isinstance(layer, LoraLayer)
    ]
    model(input_ids=torch.tensor([[1, 5, 9, 3, 2]]))
    for hook in hooks:
        hook.remove()
    return seen


def test_base_dtype_lora_computes_in_bf16_with_fp32_weights_and_the_same_names(tiny_llama):
    """On a bf16 base peft casts each adapted layer's input to fp32; ``compute_in_base_dtype``
    keeps it bf16, with the same fp32 parameters (names, values, gradients) and the same
    output up to bf16 rounding."""
    peft_way, fast = _lora_pair(str(tiny_llama), torch.bfloat16)
    assert set(_factor_inputs(peft_way)) == {torch.float32}
    assert set(_factor_inputs(fast)) == {torch.bfloat16}
    trainable = {n: p for n, p in fast.named_parameters() if p.requires_grad}
    assert trainable.keys() == {n for n, p in peft_way.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trainable.values())
    ids = torch.tensor([[1, 5, 9, 3, 2, 7, 7, 4]])
    outputs = [m(input_ids=ids).last_hidden_state.float() for m in (peft_way, fast)]
    cosine = torch.nn.functional.cosine_similarity(*outputs, dim=-1)
    assert cosine.min() > 0.999
    outputs[1].sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())
    assert any(p.grad.abs().sum() > 0 for n, p in trainable.items() if "lora_A" in n)


def test_base_dtype_lora_changes_nothing_on_an_fp32_base(tiny_llama):
    peft_way, fast = _lora_pair(str(tiny_llama), torch.float32)
    ids = torch.tensor([[1, 5, 9, 3, 2]])
    torch.testing.assert_close(
        fast(input_ids=ids).last_hidden_state,
        peft_way(input_ids=ids).last_hidden_state,
        rtol=0,
        atol=0,
    )


# Both, in training


def test_gradcache_mini_batch_2_matches_full_batch_of_8_with_fast_dropout(tiny_llama, triplets_csv):
    """GradCache replays the RNG state for each chunk's second pass: FastDropout draws from
    torch's global generator, so the masks, loss and gradients are a full batch's exactly
    (tests/training/test_gradcache.py does it for torch's dropout)."""
    batch_size = 8
    config = _config(tiny_llama, triplets_csv, lora_dropout=0.3, batch_size=batch_size)
    seed_everything(config.seed)
    embedder = build_embedder(config)
    use_fast_dropout(embedder)
    generator = torch.Generator().manual_seed(1)
    for param in embedder.parameters():  # random A *and* B: B = 0 would zero A's gradient
        if param.requires_grad:
            param.data = torch.randn(param.shape, generator=generator) * 0.1
    embedder.train()
    data = load_triplets(str(triplets_csv))
    batch = data.anchors[:batch_size], data.positives[:batch_size], data.negatives[:batch_size]
    loss_fn = build_loss("infonce", 0.05, 0.2)

    def grads() -> dict[str, torch.Tensor]:
        found = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}
        embedder.zero_grad(set_to_none=True)
        return found

    torch.manual_seed(7)
    loss = forward_backward(embedder, loss_fn, batch, Distributed(), [batch_size], 2).item()
    cached = grads()
    torch.manual_seed(7)  # the full graph, embedded in GradCache's length-sorted chunks
    vectors = embedder.embed([text for part in batch for text in part], chunk_size=2)
    ref_loss = loss_fn(*vectors.split(batch_size))
    ref_loss.backward()
    full = grads()
    assert loss == pytest.approx(ref_loss.item(), abs=1e-6)
    assert cached.keys() == full.keys()
    for key in cached:
        torch.testing.assert_close(cached[key], full[key], rtol=0, atol=1e-5, msg=key)
    assert all(g.abs().max() > 1e-4 for g in cached.values()), "a LoRA gradient is ~zero"


@pytest.mark.parametrize(
    ("candidate", "dtype"),
    [(use_fast_dropout, "fp32"), (compute_in_base_dtype, "fp32"), (compute_in_base_dtype, "bf16")],
    ids=["fast-dropout", "base-dtype-lora", "base-dtype-lora-bf16"],
)
def test_kill_and_resume_equals_uninterrupted_run(
    tiny_llama, triplets_csv, tmp_path, monkeypatch, candidate, dtype
):
    """The candidate applied to the embedder ``train`` builds (as bench_step_options.py
    applies it): a run killed at step 4 and resumed ends with the uninterrupted run's
    adapter, bit for bit (FastDropout's draws come from the checkpointed generator; the
    base-dtype factors keep the parameter names)."""
    built = []
    original_build = trainer_module.build_embedder

    def build_with_candidate(config):
        embedder = original_build(config)
        candidate(embedder)
        built.append(embedder)
        return embedder

    monkeypatch.setattr(trainer_module, "build_embedder", build_with_candidate)
    straight = _config(tiny_llama, triplets_csv, tmp_path / "straight", steps=5, dtype=dtype)
    crash_and_resume_matches(straight, tmp_path / "resumed", monkeypatch)
    assert built, "train did not build its embedder with build_embedder"
