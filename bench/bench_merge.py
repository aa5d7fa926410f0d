"""Inference with a trained adapter: LoRA merged into the base weights vs kept separate.

``Embedder.from_pretrained(adapter=...)`` (and ``eval``, ``encode``, ``serve``, ``ablate``)
fold an adapter into fp32 base weights by default; ``merge=False`` (``--no-merge-lora``)
keeps peft's LoRA layers, which add two narrow matmuls, a dropout slot and an add to every
adapted linear layer. This measures what merging buys on the first N distinct STSb test
sentences for one trained adapter (default: a run of the 30-minute recipe, LoRA on every
linear layer) and checks the two give the same vectors. Both embedders live in one
process; each repeat encodes everything once per form, in alternating order, after one
warm-up batch each.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_merge --adapter DIR

writes ``bench/results/merge.json`` and the "LoRA merged for inference" section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse

from bench.common import (
    cosines,
    environment,
    environment_block,
    fmt_ratio,
    paired_ratio,
    publish,
    spread,
    sts_sentences,
    table,
    timed_rounds,
)

NAME, HEADING = "merge", "LoRA merged for inference"
DEFAULT_ADAPTER = "runs/distill/runs/default"  # ablations/cpu-distill.yaml, recipe-s42
MIN_COSINE = 0.9999


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=DEFAULT_ADAPTER, help="a trained adapter folder")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    return parser


def measure(args: argparse.Namespace) -> dict:
    from lmembed import Embedder

    texts = sts_sentences(args.sentences)
    forms = {
        "merged": Embedder.from_pretrained(adapter=args.adapter, dtype="fp32"),
        "separate": Embedder.from_pretrained(adapter=args.adapter, dtype="fp32", merge=False),
    }
    targets = forms["separate"].model.peft_config["default"].target_modules
    encoders = {
        name: lambda batch, embedder=embedder: embedder.encode(batch, batch_size=args.batch_size)
        for name, embedder in forms.items()
    }
    seconds, vectors = timed_rounds(encoders, texts, args.repeats, warm_up=args.batch_size)

    agreement = cosines(vectors["merged"], vectors["separate"])
    if agreement.min() < MIN_COSINE:
        raise SystemExit(f"merged and separate LoRA disagree: min cosine {agreement.min():.6f}")
    return {
        "what": f"encoding {len(texts)} STSb sentences with {args.adapter}, fp32, batch "
                f"{args.batch_size}",
        "environment": environment(),
        "model": forms["merged"].spec.model,
        "lora_targets": sorted(targets),
        "seconds": {name: spread(values) for name, values in seconds.items()},
        "merged_speedup": paired_ratio(seconds["separate"], seconds["merged"]),
        "min_cosine": round(float(agreement.min()), 7),
        "texts": len(texts),
        "adapter": args.adapter,
        "batch_size": args.batch_size,
    }  # fmt: skip


def render(results: dict) -> str:
    texts, seconds, speedup = results["texts"], results["seconds"], results["merged_speedup"]
    rows = [
        [name, f"{texts / spread['median']:.1f}", f"{spread['median']:.1f}"]
        for name, spread in seconds.items()
    ]
    return "\n\n".join([
        environment_block(results["environment"], target="python -m bench.bench_merge"),
        f"{results['model']} with the adapter `{results['adapter']}` (LoRA on "
        f"{', '.join(results['lora_targets'])}), fp32, the first {texts} distinct sentences of "
        f"STSb test, batch {results['batch_size']}. Both forms in one process, "
        f"{len(speedup['values'])} repeats in alternating order after a warm-up batch; "
        "medians, and the per-repeat ratio as median (min-max).",
        table(["LoRA", "sentences/s", "seconds"], rows),
        f"- merged vs separate: {fmt_ratio(speedup)}; the vectors agree to a cosine of "
        f"{results['min_cosine']:.7f} at least (the check: ≥ {MIN_COSINE}).",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    results = measure(parser().parse_args(argv))
    publish(NAME, HEADING, results, render)
    print(f"merged vs separate: {fmt_ratio(results['merged_speedup'])}, "
          f"min cosine {results['min_cosine']:.7f}")  # fmt: skip


if __name__ == "__main__":
    main()
