"""GPU check: ``lmembed train`` on a random Gemma-3-270M, plain and with GradCache.

The GPU machine has no network and only the working tree, so this script builds
everything it needs: a randomly initialised model with Gemma-3-270M's exact
config (copied below from the converted gemma-3-270m cache), a one-token-per-byte
tokenizer, and synthetic triplets whose token counts match SNLI's under Gemma's
tokenizer (anchors ~18 tokens, positives/negatives ~11, EOS included). Step
cost depends on shapes, not on the weights or the words, so the numbers carry
over to the real model. Each run goes through ``lmembed.cli.main`` (the CLI code
path) in bf16 and reports the median step time over steps 2..N, triplets/s and
peak GPU memory (``torch.cuda.max_memory_allocated``). Then it encodes 256 texts of
mixed lengths in fp32 on the CPU and on the GPU and reports the lowest per-text cosine
between the two (``parity``).

    python -m bench.diagnostics.gpu_check            # on the GPU: 20 steps each
    python -m bench.diagnostics.gpu_check --smoke    # anywhere: tiny model, CPU allowed

Results go to stdout and, when ``$OUT`` is set, to ``$OUT/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModel, PreTrainedTokenizerFast
from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig

from bench.common import cosines
from lmembed.cli import main as lmembed_main
from lmembed.io import atomic_write_json
from lmembed.model.embedder import Embedder
from lmembed.system import accelerator
from lmembed.training.run_dir import read_metrics

# ~/.cache/lmembed/models/gemma-3-270m-q4_k_m-*/config.json (the dequantised GGUF).
GEMMA_3_270M = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 640,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "max_position_embeddings": 32768,
    "num_attention_heads": 4,
    "num_hidden_layers": 18,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 9.999999974752427e-07,
    "rope_parameters": {
        "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
    },
    "sliding_window": 512,
    "tie_word_embeddings": True,
    "unk_token_id": 3,
    "use_bidirectional_attention": False,
    "vocab_size": 262144,
}
SMOKE = {
    **GEMMA_3_270M,
    "head_dim": 16,
    "hidden_size": 64,
    "intermediate_size": 128,
    "layer_types": ["sliding_attention", "full_attention"],
    "num_hidden_layers": 2,
    "query_pre_attn_scalar": 16,
    "vocab_size": 512,
}
# Special tokens take the ids Gemma's config names (pad 0, eos 1, bos 2, unk 3).
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
LETTERS = string.ascii_lowercase + " "


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte: no tokenizer file needs to travel to the GPU machine."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIALS + alphabet)}
    backend = Tokenizer(models.BPE(vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        unk_token="<unk>", padding_side="right",
    )  # fmt: skip


def write_model(folder: Path, values: dict) -> None:
    torch.manual_seed(0)
    model = AutoModel.from_config(Gemma3TextConfig(**values), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)


def write_triplets(path: Path, n: int) -> None:
    """Random lowercase texts, lengths in characters = tokens here (EOS adds one)."""
    rng = random.Random(0)

    def text(low: int, high: int) -> str:
        return "".join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))

    rows = ["sent0,sent1,hard_neg"]
    rows += [f"{text(10, 26)},{text(6, 14)},{text(6, 14)}" for _ in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def run(root: Path, name: str, steps: int, batch: int, mini: int | None) -> dict:
    """One ``lmembed train`` run on ``root``'s model and triplets; its timings and memory."""
    output, model, data = root / name, root / "model", root / "triplets.csv"
    argv = [
        "train", "--model", str(model), "--data", str(data), "--output", str(output),
        "--steps", str(steps), "--batch-size", str(batch), "--dtype", "bf16", "--lr", "5e-4",
        "--warmup", "2", "--save-every", "0", "--seed", "0",
    ]  # fmt: skip
    if mini:
        argv += ["--mini-batch-size", str(mini)]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    lmembed_main(argv)
    wall = time.perf_counter() - began
    log = read_metrics(output / "log.jsonl")
    step_s = statistics.median(batch / r["triplets_per_s"] for r in log[1:] or log)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    result = {
        "batch": batch,
        "mini_batch_size": mini,
        "steps": steps,
        "median_step_s": round(step_s, 4),
        "triplets_per_s": round(batch / step_s, 1),
        "peak_gpu_mem_gib": None if peak is None else round(peak, 2),
        "wall_s": round(wall, 1),
        "final_loss": round(log[-1]["loss"], 4),
    }
    print(f"RESULT {name}: {json.dumps(result)}", flush=True)
    return result


def parity(root: Path, n: int = 256) -> dict:
    """fp32 embeddings on the accelerator against the CPU's, per text (padded batches of
    mixed lengths): the real model scored lower on STSb dev on the H200 than on CPUs
    (docs/quality.md), so this looks for the texts where the two forwards part."""
    rng = random.Random(1)
    texts = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 120))) for _ in range(n)]
    on_cpu = Embedder.from_pretrained(str(root / "model"), dtype="fp32")
    reference = on_cpu.encode(texts, batch_size=32, show_progress=False)
    device = accelerator() or torch.device("cpu")
    other = on_cpu.to(device).encode(texts, batch_size=32, show_progress=False)
    cosine = cosines(reference, other)
    worst = np.argsort(cosine)[:5]
    result = {
        "device": str(device),
        "texts": n,
        "min_cosine": round(float(cosine.min()), 7),
        "mean_cosine": round(float(cosine.mean()), 7),
        "worst": [{"chars": len(texts[i]), "cosine": round(float(cosine[i]), 7)} for i in worst],
    }
    print(f"RESULT parity: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model and batches, CPU is fine")
    parser.add_argument("--steps", type=int, default=None, help="default: 20, smoke: 3")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --smoke on CPU, or on the GPU machine")
    steps = args.steps or (3 if args.smoke else 20)
    # (name, global batch, GradCache texts per forward pass)
    plan = [("plain_b32", 32, None), ("gradcache_b256_m32", 256, 32), ("plain_b256", 256, None)]
    if args.smoke:
        plan = [("plain_b8", 8, None), ("gradcache_b16_m4", 16, 4)]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        write_model(root / "model", SMOKE if args.smoke else GEMMA_3_270M)
        write_triplets(root / "triplets.csv", n=max(b for _, b, _ in plan) * steps)
        results = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__,
            "smoke": args.smoke,
            "runs": {name: run(root, name, steps, batch, mini) for name, batch, mini in plan},
            "parity": parity(root),
        }
    print(json.dumps(results, indent=2))
    if os.environ.get("OUT"):
        atomic_write_json(Path(os.environ["OUT"]) / "gpu_check.json", results)


if __name__ == "__main__":
    main()
