"""``--compile`` at the gradient level: one step's loss and LoRA gradients match eager.

``test_trainer.py::test_compile_trains_the_same_adapter`` compares adapters after Adam
steps, which move each weight by about ``lr * sign(g)`` and so hide a wrong gradient
scale; this compares the gradients themselves.
"""

import pytest
import torch
from training_checks import random_lora_embedder

from lmembed.data.triplets import load_triplets
from lmembed.losses import build_loss
from lmembed.training.config import TrainConfig
from lmembed.training.distributed import Distributed
from lmembed.training.trainer import forward_backward

BATCH = 8


def _embedder(model, data, compile: bool):
    """Dropout 0: compiled dropout draws from inductor's own generator. LoRA A *and* B
    random (peft starts B at zero, which would zero A's gradient), the same in both."""
    config = TrainConfig.from_flat(
        model=str(model), data=str(data), output="unused", dtype="fp32", lora_dropout=0.0,
        seed=0, batch_size=BATCH, compile=compile,
    )  # fmt: skip
    return random_lora_embedder(config)


def _step(embedder, batch) -> tuple[float, dict[str, torch.Tensor]]:
    loss_fn = build_loss("infonce", 0.05, 0.2)
    loss = forward_backward(embedder, loss_fn, batch, Distributed(), [BATCH], None)
    grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.slow
def test_compiled_forward_backward_gives_the_eager_loss_and_gradients(tiny_llama, triplets_csv):
    data = load_triplets(str(triplets_csv))
    batch = data.anchors[:BATCH], data.positives[:BATCH], data.negatives[:BATCH]
    eager = _embedder(tiny_llama, triplets_csv, compile=False)
    compiled = _embedder(tiny_llama, triplets_csv, compile=True)
    compiling = []  # what a hook inside the backbone sees: True only in compiled code
    for embedder in (eager, compiled):
        layer = embedder.model.get_base_model().layers[0]
        layer.register_forward_hook(lambda *_: compiling.append(torch.compiler.is_compiling()))
    loss, grads = _step(eager, batch)
    assert compiling and not any(compiling)
    compiling.clear()
    compiled_loss, compiled_grads = _step(compiled, batch)
    assert compiling and all(compiling), "the compiled embedder ran eager code"
    assert compiled_loss == pytest.approx(loss, rel=1e-4)
    assert compiled_grads.keys() == grads.keys() and len(grads) > 0
    for key, ref in grads.items():
        # Inductor fuses and reorders fp32 arithmetic: rtol 1e-4, and an atol of 1e-5 of
        # the tensor's largest entry for the entries near zero.
        scale = ref.abs().max().item()
        torch.testing.assert_close(
            compiled_grads[key], ref, rtol=1e-4, atol=1e-5 * scale,
            msg=lambda m, k=key: f"{k}: {m}",
        )  # fmt: skip
    assert all(g.abs().max() > 1e-4 for g in grads.values()), "a LoRA gradient is ~zero"
