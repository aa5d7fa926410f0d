"""``--activation-checkpointing``: the same gradients as holding every activation, and a
step's peak memory falls to a fraction of what autograd holds without it (measured in a
fresh process, so a regression of this memory cut fails here, not only in the benchmark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import ARCHITECTURES, make_tiny_model
from training_checks import random_lora_embedder

from lmembed.losses import build_loss
from lmembed.training.config import TrainConfig
from lmembed.training.distributed import Distributed
from lmembed.training.trainer import forward_backward, train

TEXTS = (
    ["a man plays a guitar", "two dogs run in the park", "the cat is eating"],
    ["music", "dogs outside", "a cat eats"],
    ["silence in the hall", "a cat sleeps on the warm sofa", "three people walk"],
)


def _config(model, data, output, **changes) -> TrainConfig:
    options = dict(
        model=str(model),
        data=str(data),
        output=str(output),
        steps=3,
        batch_size=6,
        lr=1e-3,
        warmup=1,
        dtype="fp32",
        save_every=0,
        seed=0,
        lora_dropout=0.1,
    )
    return TrainConfig.from_flat(**{**options, **changes})  # fmt: skip


def _gradients(config: TrainConfig) -> dict[str, torch.Tensor]:
    """LoRA gradients of one step, dropout on."""
    embedder = random_lora_embedder(config)
    torch.manual_seed(3)
    forward_backward(embedder, build_loss("infonce", 0.05, 0.2), TEXTS, Distributed(), [3])
    return {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_checkpointing_gives_the_same_gradients(tiny_models, triplets_csv, tmp_path, arch):
    plain = _gradients(_config(tiny_models[arch], triplets_csv, tmp_path))
    config = _config(tiny_models[arch], triplets_csv, tmp_path, activation_checkpointing=1)
    assert random_lora_embedder(config).model.get_base_model().is_activation_checkpointing
    checkpointed = _gradients(config)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():  # dropout masks are redrawn identically on recompute
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=0)


def test_checkpointed_training_writes_the_same_adapter(tiny_llama, triplets_csv, tmp_path):
    adapters = {}
    for every in (0, 1, 2):
        out = tmp_path / f"every-{every}"
        train(_config(tiny_llama, triplets_csv, out, activation_checkpointing=every))
        adapters[every] = load_file(out / "adapter_model.safetensors")
    for every in (1, 2):
        assert adapters[every].keys() == adapters[0].keys()
        for key, value in adapters[0].items():
            torch.testing.assert_close(adapters[every][key], value, rtol=0, atol=0)


def test_negative_checkpointing_is_refused(tiny_llama, triplets_csv, tmp_path):
    with pytest.raises(ValueError, match="activation_checkpointing"):
        _config(tiny_llama, triplets_csv, tmp_path, activation_checkpointing=-1)


PEAK_SCRIPT = r"""
import json, re, sys, torch
from training_checks import random_lora_embedder
from lmembed.losses import build_loss
from lmembed.training.config import TrainConfig
from lmembed.training.distributed import Distributed
from lmembed.training.trainer import forward_backward

def rss_mb(field):
    status = open("/proc/self/status").read()
    return int(re.search(field + r":\s+(\d+)", status).group(1)) / 1024

config = TrainConfig.from_flat(**json.loads(sys.argv[1]))
embedder = random_lora_embedder(config)
texts = json.loads(sys.argv[2])
saved = {}
def pack(tensor):
    if not isinstance(tensor, torch.nn.Parameter):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return tensor
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = rss_mb("VmRSS")
with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
    forward_backward(embedder, build_loss("infonce", 0.05, 0.2), texts, Distributed(), [8])
print(json.dumps({"peak": rss_mb("VmHWM") - before, "saved": sum(saved.values()) / 2**20}))
"""


def _peak_mb(model, data, output, texts, **changes) -> dict[str, float]:
    """Peak RSS growth (MB) of one training step in a fresh process; glibc returns every
    large block at once (fixed mmap threshold), so the peak is what the step held."""
    options = dict(model=str(model), data=str(data), output=str(output), steps=1, batch_size=8,
                   dtype="fp32", lora_targets=["all-linear"], **changes)  # fmt: skip
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    tests = Path(__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, json.dumps(options), json.dumps(texts)],
        env={**env, "PYTHONPATH": f"{tests}{os.pathsep}{tests.parent}"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's VmHWM reset")
def test_step_memory_is_what_autograd_holds_and_checkpointing_cuts_it(triplets_csv, tmp_path):
    """A 4-layer, 256-wide model and 3 x 8 texts of 160 tokens: holding every activation
    peaks near the bytes autograd saved (the floor of that mode); checkpointing every layer
    peaks at a fraction of it."""
    sizes = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4)  # fmt: skip
    model = make_tiny_model(tmp_path / "model", "llama", **sizes)
    words = "a man is playing a guitar in the park while two dogs run near the car "
    texts = [[(words * 3)[i : i + 160] for i in range(8)] for _ in range(3)]
    plain = _peak_mb(model, triplets_csv, tmp_path / "plain", texts)
    held = _peak_mb(model, triplets_csv, tmp_path / "ckpt", texts, activation_checkpointing=1)
    assert plain["saved"] > 100, plain  # activations dominate the step
    assert plain["peak"] < 1.5 * plain["saved"], plain
    assert held["peak"] < 0.4 * plain["peak"], (held, plain)
