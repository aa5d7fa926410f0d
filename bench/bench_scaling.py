"""Scaling: lmembed step time and peak memory against batch size and sequence length.

Each point is an ``lmembed.training.train`` run of gemma-3-270m (bf16, LoRA 8/32/0.1) in its
own process: peak RSS is that process's (model load included, so the growth above the
smallest point is what the batch costs), step time the median of the steps after the
first. Batch size sweeps use the NLI triplets as they are (max_length 128); length sweeps
use texts made of many NLI sentences joined, so every text is cut at exactly max_length.
One run per point: this is a curve, not a comparison.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_scaling

writes ``bench/results/scaling.json``, ``docs/img/bench-scaling.png`` and the "Scaling"
section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from bench.common import (
    IMAGES,
    environment,
    environment_block,
    nli_path,
    publish,
    run_worker,
    table,
    worker_main,
)
from bench.systems import Recipe, train_lmembed

NAME, HEADING = "scaling", "Scaling"
PLOT = IMAGES / "bench-scaling.png"


def long_triplets(path: str, count: int, join: int):
    """``count`` triplets whose texts each join ``join`` consecutive NLI sentences."""
    from lmembed.data.triplets import Triplets, load_triplets

    rows = load_triplets(path, limit=count * join)
    if len(rows) < count * join:
        raise SystemExit(f"{path} has {len(rows)} triplets; need {count * join}")

    def joined(column: list[str]) -> list[str]:
        return [" ".join(column[i * join : (i + 1) * join]) for i in range(count)]

    return Triplets(joined(rows.anchors), joined(rows.positives), joined(rows.negatives))


def scale_worker(recipe: dict, join: int, workdir: str) -> dict:
    plan = Recipe(**recipe)
    data = None
    if join > 1:
        data = long_triplets(plan.data, plan.batch_size * plan.steps, join)
    return train_lmembed(recipe, str(Path(workdir) / "run"), data)


def point(plan: Recipe, join: int) -> dict:
    run = run_worker(__spec__.name, "scale", {"recipe": plan.to_dict(), "join": join})
    step = statistics.median(run["step_s"][1:])
    result = {
        "batch_size": plan.batch_size,
        "max_length": plan.max_length,
        "step_s": round(step, 3),
        "ms_per_triplet": round(1000 * step / plan.batch_size, 1),
        "peak_rss_mib": run["peak_rss_mib"],
        "all_step_s": [round(s, 3) for s in run["step_s"]],
    }
    print(result, flush=True)
    return result


def growth(points: list[dict], key: str) -> float:
    """Exponent k in cost ~ x^k, from the first to the last point (log-log slope)."""
    first, last = points[0], points[-1]
    return math.log(last["step_s"] / first["step_s"]) / math.log(last[key] / first[key])


def describe(exponent: float) -> str:
    if exponent < 0.9:
        return "sub-linear"
    return "about linear" if exponent <= 1.1 else "super-linear"


def per_token(p: dict) -> str:
    """ms per token of a length-sweep point: every text is cut at exactly max_length."""
    return f"{1000 * p['step_s'] / (3 * p['batch_size'] * p['max_length']):.2f}"


def plot(results: dict) -> None:
    """``docs/img/bench-scaling.png``: step time and peak RSS of both sweeps."""
    batches, lengths = results["batch_sweep"], results["length_sweep"]
    length_batch = lengths[0]["batch_size"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, points, key, label in (
        (axes[0], batches, "batch_size", "batch size (triplets, NLI lengths, max 128 tokens)"),
        (axes[1], lengths, "max_length", f"tokens per text (batch {length_batch})"),
    ):
        x = [p[key] for p in points]
        ax.plot(x, [p["step_s"] for p in points], "o-", color="tab:blue")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per step", color="tab:blue")
        twin = ax.twinx()
        twin.plot(x, [p["peak_rss_mib"] / 1024 for p in points], "s--", color="tab:red")
        twin.set_ylabel("peak RSS (GiB)", color="tab:red")
    fig.suptitle("lmembed training step on gemma-3-270m (CPU, bf16, LoRA)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--length-batch", type=int, default=8, help="batch for the length sweep")
    parser.add_argument("--steps", type=int, default=3, help="steps per point, the first untimed")
    return parser


def joined_sentences(lengths: list[int]) -> int:
    """NLI sentences per text of the length sweep: they have 5-50 tokens, so max_length/4
    of them joined always pass max_length."""
    return max(lengths) // 4


def measure(args: argparse.Namespace) -> dict:
    data = str(nli_path())
    batches = [point(Recipe(data=data, steps=args.steps, batch_size=b), join=1)
               for b in args.batch_sizes]  # fmt: skip
    join = joined_sentences(args.lengths)
    lengths = [
        point(Recipe(data=data, steps=args.steps, batch_size=args.length_batch, max_length=n),
              join=join)
        for n in args.lengths
    ]  # fmt: skip
    exponents = {"batch_size": growth(batches, "batch_size"),
                 "max_length": growth(lengths, "max_length")}  # fmt: skip
    return {"what": "lmembed step time and peak RSS vs batch size and length",
            "environment": environment(), "batch_sweep": batches, "length_sweep": lengths,
            "growth_exponent": exponents}  # fmt: skip


def render(results: dict) -> str:
    batches, lengths = results["batch_sweep"], results["length_sweep"]
    exponents = results["growth_exponent"]
    steps = len(batches[0]["all_step_s"])
    join = joined_sentences([p["max_length"] for p in lengths])
    header = ["batch", "max tokens", "s/step", "ms/triplet", "peak RSS MiB"]
    rows = [[p["batch_size"], p["max_length"], f"{p['step_s']:.2f}", f"{p['ms_per_triplet']:.0f}",
             p["peak_rss_mib"]] for p in [*batches, *lengths]]  # fmt: skip
    return "\n\n".join([
        environment_block(results["environment"]),
        f"One `lmembed train` process per point, {steps} steps, the median of steps "
        "2.. as the step time; peak RSS includes the model load (about the same for every "
        "point). The first rows keep the NLI texts as they are (most are 10-30 tokens, so "
        f"max_length 128 rarely cuts); the last rows use batch {lengths[0]['batch_size']} and "
        f"texts of {join} joined NLI sentences, cut at exactly max tokens.",
        table(header, rows),
        "![step time and peak memory against batch size and length](img/bench-scaling.png)",
        f"- Batch size: step time grows as batch^{exponents['batch_size']:.2f} from "
        f"{batches[0]['batch_size']} to {batches[-1]['batch_size']} triplets "
        f"({describe(exponents['batch_size'])}); "
        f"{batches[0]['ms_per_triplet']:.0f} -> {batches[-1]['ms_per_triplet']:.0f} ms per "
        f"triplet. Peak RSS grows by {batches[-1]['peak_rss_mib'] - batches[0]['peak_rss_mib']}"
        " MiB over the sweep: the activations kept for the backward pass.\n"
        f"- Length: step time grows as length^{exponents['max_length']:.2f} from "
        f"{lengths[0]['max_length']} to {lengths[-1]['max_length']} tokens "
        f"({describe(exponents['max_length'])}); {per_token(lengths[0])} -> "
        f"{per_token(lengths[-1])} ms per token. Peak RSS grows by "
        f"{lengths[-1]['peak_rss_mib'] - lengths[0]['peak_rss_mib']} MiB over the sweep.",
        "Reading: the linear layers' work is proportional to the tokens in a step, so an "
        "exponent near 1 means cost per token is flat; above 1, attention's quadratic term "
        "(or poorer cache use) shows; below 1, larger passes use the 2 cores better.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    results = measure(parser().parse_args(argv))
    plot(results)
    publish(NAME, HEADING, results, render)


if __name__ == "__main__" and not worker_main({"scale": scale_worker}):
    main()
