"""Training throughput and peak memory: lmembed vs the paper's recipe vs sentence-transformers.

Same model (gemma-3-270m, bf16), the same first 640 NLI triplets and the same batches of
32, LoRA 8/32/0.1 on q_proj/v_proj (see ``systems.py``). Every (system, repeat) is a fresh
process; the systems alternate within each repeat. Throughput counts the steps after the
first (warm-up) step; peak RSS is the process's whole life.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_train

writes ``bench/results/train.json`` and the "Training throughput and memory" section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

from bench.common import (
    alternating,
    available_gib,
    environment,
    environment_block,
    fmt_ratio,
    met,
    nli_path,
    paired_ratio,
    publish,
    run_worker,
    spread,
    table,
    worker_main,
)
from bench.systems import TRAINERS, Recipe

SYSTEMS = ("lmembed", "reference", "sentence-transformers")
TARGETS = {"reference": 8.0, "sentence-transformers": 1.2}
NAME, HEADING = "train", "Training throughput and memory"
# Reference peak memory model (GiB): model and runtime, plus per triplet in the batch.
REFERENCE_GIB = (1.5, 0.6)


def train_worker(system: str, recipe: dict, workdir: str) -> dict:
    return TRAINERS[system](recipe, str(Path(workdir) / "run"))


def reference_batch(batch: int) -> tuple[int, float]:
    """The largest of ``batch``, ``batch / 2``, ... (down to 8) whose reference run fits in
    the memory free now, and that free memory (GiB).

    Padding to 150 tokens makes the reference hold the graph of ``3 x batch x 150``
    tokens: 20.5 GB peak RSS at batch 32 here, which other jobs on a 24 GB machine can
    push past the OOM killer. Its cost per triplet does not depend on the batch (every
    text is padded to the same 150 tokens), so a smaller batch still measures it.
    """
    base, per_triplet = REFERENCE_GIB
    free = available_gib()
    while batch > 8 and base + per_triplet * batch > free:
        batch //= 2
    return batch, free


def run_system(system: str, recipe: Recipe) -> dict:
    free = None
    if system == "reference":
        batch, free = reference_batch(recipe.batch_size)
        recipe = replace(recipe, batch_size=batch)
    run = run_worker(__spec__.name, "train", {"system": system, "recipe": recipe.to_dict()})
    # The median step: a step that another process on the machine slowed is an outlier.
    run["triplets_per_s"] = recipe.batch_size / statistics.median(run["step_s"][1:])
    run.update(batch_size=recipe.batch_size, available_gib=free)
    print(f"{system}: {run['triplets_per_s']:.2f} triplets/s, peak RSS {run['peak_rss_mib']} MiB,"
          f" steps {[round(s, 2) for s in run['step_s']]}", flush=True)  # fmt: skip
    return run


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="steps per run, the first untimed")
    parser.add_argument("--reference-steps", type=int, default=2,
                        help="steps per reference run (~1 min each at batch 32)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=640, help="the first N triplets")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser


def measure(args: argparse.Namespace) -> dict:
    data = str(nli_path())
    recipes = {
        system: Recipe(
            data=data,
            limit=args.limit,
            batch_size=args.batch_size,
            steps=args.reference_steps if system == "reference" else args.steps,
        )
        for system in SYSTEMS
    }
    runs: dict[str, list[dict]] = {system: [] for system in SYSTEMS}
    for repeat in range(args.repeats):
        for system in alternating(SYSTEMS, repeat):
            runs[system].append(run_system(system, recipes[system]))
    rate = {system: [run["triplets_per_s"] for run in runs[system]] for system in SYSTEMS}
    rss = {system: [run["peak_rss_mib"] for run in runs[system]] for system in SYSTEMS}
    return {
        "what": "training triplets/s and peak RSS, gemma-3-270m bf16, LoRA 8/32/0.1 q_proj/v_proj",
        "environment": environment(),
        "recipes": {system: recipe.to_dict() for system, recipe in recipes.items()},
        "triplets_per_s": {system: spread(values) for system, values in rate.items()},
        "peak_rss_mib": {system: spread(values, 0) for system, values in rss.items()},
        "lmembed_speedup": {o: paired_ratio(rate["lmembed"], rate[o]) for o in SYSTEMS[1:]},
        "lmembed_memory_ratio": {o: paired_ratio(rss["lmembed"], rss[o]) for o in SYSTEMS[1:]},
        "runs": runs,
    }


def render(results: dict) -> str:
    runs, speedup, memory = (
        results[key] for key in ("runs", "lmembed_speedup", "lmembed_memory_ratio")
    )
    rate = {system: [run["triplets_per_s"] for run in runs[system]] for system in SYSTEMS}
    rss = {system: [run["peak_rss_mib"] for run in runs[system]] for system in SYSTEMS}
    repeats = len(runs["lmembed"])
    rows = []
    for system in SYSTEMS:
        step = statistics.median(s for run in runs[system] for s in run["step_s"][1:])
        first_loss = statistics.median(run["losses"][0] for run in runs[system])
        ratio = "1" if system == "lmembed" else fmt_ratio(speedup[system])
        batches = sorted({run["batch_size"] for run in runs[system]})
        rows.append([
            system, "/".join(map(str, batches)), f"{statistics.median(rate[system]):.2f}",
            f"{step:.2f}", ratio, f"{statistics.median(rss[system]):.0f}", f"{first_loss:.4f}",
        ])  # fmt: skip
    header = ["system", "batch", "triplets/s", "s/step", "lmembed speed-up", "peak RSS MiB",
              "step-1 loss"]  # fmt: skip
    lm, ref = (Recipe(**results["recipes"][system]) for system in ("lmembed", "reference"))
    small = [run for run in runs["reference"] if run["batch_size"] < lm.batch_size]
    fallback = (
        f" The reference ran at batch {small[0]['batch_size']} in {len(small)} of "
        f"{repeats} repeats: at batch {lm.batch_size} it needs about "
        f"{REFERENCE_GIB[0] + REFERENCE_GIB[1] * lm.batch_size:.0f} GiB and only "
        f"{min(run['available_gib'] for run in small):.1f} GiB were free (other jobs share "
        "the machine). Its work per triplet does not depend on the batch, since every text "
        "is padded to the same length; its peak memory and step-1 loss are then those of "
        "the smaller batch."
        if small
        else ""
    )
    return "\n\n".join([
        environment_block(results["environment"]),
        f"gemma-3-270m with bf16 weights (LoRA weights fp32), the first {lm.limit} NLI "
        f"triplets, batch {lm.batch_size}, LoRA 8/32/0.1 on q_proj/v_proj, lr {lm.lr}, all "
        f"systems on the same batches. {repeats} repeats, each system in a fresh process, "
        f"order rotated every repeat; lmembed and sentence-transformers run {lm.steps} steps, "
        f"the reference {ref.steps} (its steps are slow); the first step of each run is a "
        "warm-up and not timed, and a run's triplets/s uses its median step. Values are "
        "medians over repeats; a speed-up is lmembed's "
        "triplets/s over the other system's in the same repeat, median (min-max). Peak RSS "
        "covers the whole process (model load included). The step-1 loss is the base "
        "model's loss on the first batch (LoRA B starts at zero): lmembed's and "
        "sentence-transformers' are equal up to bf16 rounding, which depends on how the "
        "texts are padded (about ±0.1; in fp32, padding changes it by under 1e-5); the "
        "reference's differs because the paper's code pools the last text token, not EOS."
        + fallback,
        table(header, rows),
        f"- vs the reference recipe: {fmt_ratio(speedup['reference'])}, "
        f"{met(speedup['reference'], TARGETS['reference'])}; peak memory "
        f"{fmt_ratio(memory['reference'])} of the reference's.\n"
        f"- vs sentence-transformers: {fmt_ratio(speedup['sentence-transformers'])}, "
        f"{met(speedup['sentence-transformers'], TARGETS['sentence-transformers'])}; peak "
        f"memory {fmt_ratio(memory['sentence-transformers'])} of sentence-transformers'.",
        "The reference recipe is the paper's code (trapoom555/Language-Model-STS-CFT) as "
        "written for one process: `AutoModelForCausalLM(..., output_hidden_states=True)` "
        "computes 262,144 vocabulary logits per token that are never used, and every text is "
        f"padded to {ref.reference_max_length} tokens (these NLI texts average ~14 with BOS and "
        "EOS), with no EOS appended and the loss in bf16, as its code does. It pads on "
        "the left, as the paper's Llama/Gemma tokenizers do, so position -1 is the text's "
        "last token; with right padding it would be a pad token for every short text. "
        "Appending EOS and an fp32 loss (`reference+eos`, scored in the quality benchmark) "
        "add one token to a text already padded to that length, so the cost is the same. "
        "Texts are tokenized once before training, as in the paper's preprocessing, so its "
        "step time excludes tokenization (lmembed's and sentence-transformers' include it).",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    cli = parser()
    args = cli.parse_args(argv)
    if min(args.steps, args.reference_steps) < 2:
        cli.error("--steps and --reference-steps need at least 2 (one warm-up step)")
    results = measure(args)
    publish(NAME, HEADING, results, render)
    speedup = results["lmembed_speedup"]
    print(f"speed-up vs reference {fmt_ratio(speedup['reference'])}, "
          f"vs sentence-transformers {fmt_ratio(speedup['sentence-transformers'])}")  # fmt: skip


if __name__ == "__main__" and not worker_main({"train": train_worker}):
    main()
