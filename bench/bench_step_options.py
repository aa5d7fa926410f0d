"""Training-step candidates, each against the current step on the same batches.

Every candidate is a separately built demo-recipe trainer (gemma-3-270m, ``--dtype auto``,
32 NLI triplets per step, LoRA 8/32/0.1 on every linear layer) in this one process. Each round
runs one step of every trainer on the same batch, in rotated order; a candidate's speed-up
is the current step's seconds over its own in the same round, median (min-max) over rounds.
Candidates (issue 17):

* ``sdpa attention``: transformers' default kernel, which training used before
  ``--attn-implementation auto`` picked eager for bf16 on a CPU (the earlier rows named
  ``eager attention`` measured the other direction);
* ``torch.compile``: ``lmembed train --compile`` (inductor, dynamic shapes), so the
  elementwise kernels around the matmuls (norms, GELU, residuals, LoRA scaling) can fuse;
* ``no LoRA dropout`` (measurement only: it changes the recipe): what dropout's masks cost;
* ``fast LoRA dropout``: ``use_fast_dropout`` (``bench/lora_candidates.py``), masks from
  15-bit random lanes (``FastDropout``), four elements per 64-bit draw instead of one
  Bernoulli draw each;
* ``packed texts``: each pass's texts side by side in rows as long as the longest one,
  with a block-diagonal mask (``bench/packing.py``), instead of padded rows;
* ``LoRA on the top 9 layers`` (measurement only: it changes the recipe):
  ``--lora-top-layers 9``, so the backward pass stops halfway down (issue 14 asks whether
  the extra steps that buys beat the full adapter);
* ``LoRA in the base dtype``: ``compute_in_base_dtype`` (``bench/lora_candidates.py``),
  the adapter computed in bf16 on a bf16 base, so no adapted layer casts its activations to
  fp32 and back (only on CPUs where ``--dtype auto`` picks bf16; elsewhere it is the
  current step);
* ``KV cache built (the step before 2026-12-02)``: the step between commit 798611a, which
  dropped ``use_cache=False`` from ``Embedder.forward``, and ``Embedder`` turning
  ``config.use_cache`` off: a KV cache built in every pass and never read; what it cost;
* ``torch.compile + ...``: the candidates that keep the recipe, combined (``--compile``
  with ``compute_in_base_dtype`` [and ``use_fast_dropout``]): whether their gains add up.

A candidate is a change to the built embedder (a function), a dict of options for a
trainer built from another config, or a tuple of both: the trainer built from the dicts,
then every function applied (before its first step, so ``--compile`` traces the changed
model).

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_step_options

writes ``bench/results/step_options.json`` and the "Training-step candidates" section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from bench.common import (
    RESULTS,
    alternating,
    demo_config,
    environment,
    environment_block,
    fmt_ratio,
    publish,
    spread,
    table,
)
from bench.lora_candidates import compute_in_base_dtype, use_fast_dropout
from bench.packing import use_packing

NAME, HEADING = "step_options", "Training-step candidates"
BASELINE = "current"


def no_dropout(embedder) -> None:
    for module in embedder.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def kv_cache(embedder) -> None:
    embedder.model.config.use_cache = True


Candidate = Callable | dict | tuple | None

CANDIDATES: dict[str, Candidate] = {
    BASELINE: None,
    "KV cache built (the step before 2026-12-02)": kv_cache,
    "sdpa attention": {"attn_implementation": "sdpa"},
    "torch.compile": {"compile": True},
    "no LoRA dropout (measure only)": no_dropout,
    "fast LoRA dropout": use_fast_dropout,
    "packed texts": use_packing,
    "LoRA on the top 9 layers (measure only)": {"lora_top_layers": 9},
    "LoRA in the base dtype": compute_in_base_dtype,
    "torch.compile + LoRA in the base dtype": ({"compile": True}, compute_in_base_dtype),
    "torch.compile + base dtype + fast dropout": (
        {"compile": True},
        compute_in_base_dtype,
        use_fast_dropout,
    ),
}


def trainer(candidate: Candidate, config, loss_fn) -> Callable[[tuple], float]:
    """A fresh demo-recipe embedder with ``candidate`` applied; returns its timed step."""
    from lmembed.training.distributed import Distributed
    from lmembed.training.trainer import build_embedder, forward_backward

    parts = candidate if isinstance(candidate, tuple) else (candidate,)
    for options in (part for part in parts if isinstance(part, dict)):
        config = config.replace(**options)  # other options: the trainer is built from them
    embedder = build_embedder(config)
    for change in (part for part in parts if callable(part)):
        change(embedder)
    embedder.train()
    trainable = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr)
    job = Distributed()

    def step(texts: tuple) -> float:
        began = time.perf_counter()
        forward_backward(embedder, loss_fn, texts, job, [len(texts[0])])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - began

    return step


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles)")
    parser.add_argument("--only", nargs="*", default=None, help="candidates to run")
    return parser


def measure(args: argparse.Namespace) -> dict:
    """Every candidate's steps; with ``--only``, the others' rows from the previous run."""
    from lmembed.data.training import load_training_data
    from lmembed.losses import build_loss
    from lmembed.training.trainer import batch_texts

    config = demo_config()
    data = load_training_data(config.dataset)
    loss_fn = build_loss("infonce", 0.05, 0.2)
    names = [BASELINE, *[n for n in CANDIDATES if n != BASELINE and n in (args.only or [n])]]
    steps, warmup_s = {}, {}
    for name in names:
        torch.manual_seed(config.seed)
        steps[name] = trainer(CANDIDATES[name], config, loss_fn)
        warmup_s[name] = [
            round(steps[name](batch_texts(data.batch(i, 32, config.seed), True)), 2)
            for i in range(args.warmup)
        ]
        print(f"{name}: warm-up steps {warmup_s[name]} s", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        texts = batch_texts(data.batch(args.warmup + r, 32, config.seed), True)
        for name in alternating(names, r):
            seconds[name].append(steps[name](texts))
        print({name: round(values[-1], 2) for name, values in seconds.items()}, flush=True)
    base = seconds[BASELINE]
    env = environment()
    result = {
        "environment": env, "model": config.embedding.model,
        "dtype": config.embedding.dtype, "rounds": args.rounds, "warmup_s": warmup_s,
        "median_step_s": {n: round(statistics.median(v), 3) for n, v in seconds.items()},
        "speedup": {n: spread([b / c for b, c in zip(base, v, strict=True)])
                    for n, v in seconds.items()},
        "seconds": seconds,
        "measured": dict.fromkeys(names, env["date"]),
    }  # fmt: skip
    return with_earlier_candidates(result) if args.only else result


def main(argv: list[str] | None = None) -> None:
    publish(NAME, HEADING, measure(parser().parse_args(argv)), render)


def with_earlier_candidates(result: dict) -> dict:
    """Add the candidates that ``--only`` left out, from the previous run on the same CPU.

    Each speed-up is against the current step of its own run, so rows from two runs
    stay comparable; the table says when each was measured.
    """
    path = RESULTS / "step_options.json"
    if not path.is_file():
        return result
    old = json.loads(path.read_text(encoding="utf-8"))
    if old["environment"]["cpu"] != result["environment"]["cpu"]:
        return result
    old.setdefault("measured", dict.fromkeys(old["median_step_s"], old["environment"]["date"]))
    per_candidate = ("warmup_s", "median_step_s", "speedup", "seconds", "measured")
    return {**result, **{key: {**old[key], **result[key]} for key in per_candidate}}


def render(results: dict) -> str:
    rows = [
        [name, ", ".join(f"{s:.1f}" for s in results["warmup_s"][name]),
         f"{results['median_step_s'][name]:.2f}", fmt_ratio(results["speedup"][name]),
         results["measured"][name]]
        for name in results["median_step_s"]
    ]  # fmt: skip
    return "\n".join([
        f"{results['model']} ({results['dtype']}, what `--dtype auto` chose here), the demo "
        f"recipe's step (32 triplets), {results['rounds']} rounds; each round runs every "
        "trainer once on the same batch, in rotated order. Speed-up: the current step's "
        "seconds over the candidate's in the same round, median (min-max). Warm-up steps are "
        "untimed (compilation happens there). `--only` reruns some candidates and keeps the "
        "others' rows from the previous run on the same CPU (their date says which).",
        "",
        table(["candidate", "warm-up steps (s)", "median step s", "speed-up", "measured"], rows),
        "",
        environment_block(results["environment"], target="python -m bench.bench_step_options"),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
