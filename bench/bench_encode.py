"""Encoding throughput: ``Embedder.encode`` vs ``SentenceTransformer.encode``.

Both wrap the same gemma-3-270m weights (bf16), append EOS (sentence-transformers through
its tokenizer's post-processor, token ids checked equal), pool the last token, truncate at
128 tokens and use batch 32, on the first 2,000 distinct sentences of STSb test. Both
models live in this one process; each repeat encodes everything once per system, in
alternating order, after one warm-up batch each. The embeddings must agree: mean cosine
>= 0.999 in fp32 (in bf16 the rounding depends on padding, so the bf16 agreement is
reported next to lmembed's agreement with itself at another batch size).

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_encode

writes ``bench/results/encode.json`` and the "Encoding throughput" section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

import numpy as np

from bench.common import (
    cosines,
    environment,
    environment_block,
    fmt_ratio,
    met,
    paired_ratio,
    publish,
    spread,
    sts_sentences,
    table,
    timed_rounds,
)
from bench.systems import Recipe, check_same_tokens, st_model

NAME, HEADING = "encode", "Encoding throughput"
MIN_MEAN_COSINE = 0.999


def summary(values: np.ndarray) -> dict:
    return {"mean": round(float(values.mean()), 6), "min": round(float(values.min()), 6)}


def fmt_cos(values: dict) -> str:
    """A ``summary``: mean / min."""
    return f"{values['mean']:.5f} / {values['min']:.4f}"


def fp32_agreement(plan: Recipe, texts: list[str], batch_size: int) -> np.ndarray:
    """Cosines between the two systems in fp32, where padding does not move embeddings."""
    from lmembed import Embedder

    ours = Embedder.from_pretrained(plan.model, max_length=plan.max_length, dtype="fp32")
    theirs = st_model(replace(plan, dtype="fp32"), lora=False).eval()
    return cosines(
        ours.encode(texts, batch_size=batch_size, show_progress=False),
        np.asarray(theirs.encode(texts, batch_size=batch_size, show_progress_bar=False)),
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--check-sentences", type=int, default=200,
                        help="sentences for the fp32 agreement check")  # fmt: skip
    return parser


def measure(args: argparse.Namespace) -> dict:
    from lmembed import Embedder

    texts = sts_sentences(args.sentences)
    plan = Recipe(data="", steps=0)
    embedder = Embedder.from_pretrained(plan.model, max_length=plan.max_length, dtype="bf16")
    st = st_model(plan, lora=False).eval()
    check_same_tokens(st, plan, texts)
    encoders = {
        "lmembed": lambda batch: embedder.encode(batch, batch_size=args.batch_size,
                                                 show_progress=False),
        "sentence-transformers": lambda batch: st.encode(batch, batch_size=args.batch_size,
                                                         show_progress_bar=False),
    }  # fmt: skip

    seconds, vectors = timed_rounds(encoders, texts, args.repeats, warm_up=args.batch_size)

    bf16 = cosines(vectors["lmembed"], vectors["sentence-transformers"])
    sample = texts[: args.check_sentences]
    # Yardstick: bf16 rounding depends on padding, so lmembed differs from itself too.
    alone = embedder.encode(sample, batch_size=1, show_progress=False)
    itself = cosines(alone, vectors["lmembed"][: len(sample)])
    fp32 = fp32_agreement(plan, sample, args.batch_size)
    if fp32.mean() < MIN_MEAN_COSINE:
        raise SystemExit(f"embeddings disagree in fp32: mean cosine {fp32.mean():.6f}")
    rates = {name: [len(texts) / s for s in values] for name, values in seconds.items()}
    return {
        "what": f"encoding {len(texts)} STSb sentences, gemma-3-270m bf16, batch "
                f"{args.batch_size}",
        "environment": environment(),
        "sentences_per_s": {name: spread(values) for name, values in rates.items()},
        "lmembed_speedup": paired_ratio(rates["lmembed"], rates["sentence-transformers"]),
        "cosine": {"lmembed_vs_st_bf16": summary(bf16), "lmembed_vs_st_fp32": summary(fp32),
                   "lmembed_batch_1_vs_32_bf16": summary(itself)},
        "texts": len(texts),
        "batch_size": args.batch_size,
        "check_sentences": len(sample),
    }  # fmt: skip


def render(results: dict) -> str:
    texts, rates, speedup = results["texts"], results["sentences_per_s"], results["lmembed_speedup"]
    cosine = results["cosine"]
    rows = [  # seconds per repeat: the texts over that repeat's rate
        [name, f"{rate['median']:.1f}",
         f"{statistics.median(texts / r for r in rate['values']):.1f}"]
        for name, rate in rates.items()
    ]  # fmt: skip
    return "\n\n".join([
        environment_block(results["environment"]),
        f"The first {texts} distinct sentences of STSb test, gemma-3-270m in bf16, EOS "
        f"appended, last-token pooling, max 128 tokens, batch {results['batch_size']}. Both "
        f"models in one process, {len(speedup['values'])} repeats in alternating order after a "
        "warm-up batch; medians, and the per-repeat ratio as median (min-max).",
        table(["system", "sentences/s", "seconds"], rows),
        f"- lmembed vs sentence-transformers: {fmt_ratio(speedup)}, {met(speedup, 1.0)}.",
        f"- Agreement (cosine of the two systems' embeddings of the same sentence, mean / "
        f"min): {fmt_cos(cosine['lmembed_vs_st_fp32'])} in fp32 on the first "
        f"{results['check_sentences']} sentences (the check: mean ≥ {MIN_MEAN_COSINE}), "
        f"{fmt_cos(cosine['lmembed_vs_st_bf16'])} in bf16 on all {texts}. bf16 rounding "
        "depends on how a text is padded: lmembed against itself at batch 1 instead of 32 "
        f"gives {fmt_cos(cosine['lmembed_batch_1_vs_32_bf16'])}.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    results = measure(parser().parse_args(argv))
    publish(NAME, HEADING, results, render)
    print(f"lmembed vs sentence-transformers: {fmt_ratio(results['lmembed_speedup'])}")


if __name__ == "__main__":
    main()
