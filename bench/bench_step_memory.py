"""Training memory over steps: RSS after each step and the step time, as the trainer keeps or
returns freed memory and as oneDNN's kernel cache is bounded (issue 36).

A training process's RSS used to climb for dozens of steps (``make demo``: 1,991 MB after
step 1, 3,502 MB after step 49) with the same model and batch size. Two causes, each a
variant here: glibc keeps the freed activations of each batch (their shapes differ with the
batch's longest text) in its heap, and oneDNN compiles and keeps a set of bf16 kernels per
input shape (up to 1,024 by default). Each variant is ``lmembed train`` with the demo recipe
(``configs/gemma-3-270m-cpu.yaml``: ``--dtype auto``, 32 triplets, all-linear LoRA,
activation checkpointing; no evaluations, no checkpoints) for ``--steps`` steps in a fresh
process under ``bench.memory_probe``; variants alternate over ``--repeats``. A step's time is
from one step's end to the next's (optimizer, freeing memory and the next batch included);
each variant's is the median of steps 2 onward, as a ratio to the first variant's in the same
repeat.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_step_memory

writes ``bench/results/step_memory.json`` and the "Training memory over steps" section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.bench_memory import run_probe
from bench.common import (
    ROOT,
    alternating,
    environment,
    environment_block,
    fmt_ratio,
    nli_path,
    paired_ratio,
    publish,
    spread,
    table,
    worker_env,
)
from lmembed.system import ONEDNN_CACHE_CAPACITY

NAME, HEADING = "step_memory", "Training memory over steps"
STEP_PHASES = ("first step", "steady training")


def variants() -> dict[str, dict[str, str]]:
    """Name -> environment. The first is the trainer before it returned freed memory, with
    oneDNN's default cache; the last is lmembed's default now."""
    kept = {"LMEMBED_PROBE_KEEP_FREED": "1", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}
    returned = {"LMEMBED_PROBE_KEEP_FREED": "0"}
    return {
        "kept, cache 1024 (before)": kept,
        "returned, cache 1024": {**returned, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"},
        "returned, cache 16": {**returned, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16"},
        f"returned, cache {ONEDNN_CACHE_CAPACITY} (default)": returned,
    }


def step_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r["phase"] in STEP_PHASES]


def step_seconds(records: list[dict]) -> float:
    """Median seconds from one step's end to the next's, steps 2 onward."""
    times = [r["t"] for r in step_records(records)]
    return statistics.median(b - a for a, b in zip(times[:-1], times[1:], strict=True))


def summarise(records: list[dict]) -> dict:
    steps = step_records(records)
    return {
        "rss_after_step_mb": [round(r["rss_mb"]) for r in steps],
        "peak_mb": round(max(r["peak_mb"] for r in steps)),
        "seconds_per_step": round(step_seconds(records), 3),
        "tokens": [r["tokens"] for r in steps],
    }


def measure(args: argparse.Namespace) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name in variants()}
    with tempfile.TemporaryDirectory(prefix="bench-step-memory-") as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for repeat in range(args.repeats):
            for name in alternating(list(variants()), repeat):
                tag = f"{name.split(' (')[0].replace(', ', '-').replace(' ', '')}-r{repeat}"
                argv = ["train", "--config", str(ROOT / "configs" / "gemma-3-270m-cpu.yaml"),
                        "--data", str(nli_path()), "--output", str(workdir / tag),
                        "--steps", str(args.steps), "--eval-every", "0", "--no-eval-at-start",
                        "--save-every", "0"]  # fmt: skip
                env = {**worker_env(), **variants()[name]}
                runs[name].append(summarise(run_probe(tag, argv, workdir, env=env)))
    return {"environment": environment(), "args": {k: v for k, v in vars(args).items()
                                                   if k != "logs"}, "runs": runs}  # fmt: skip


def render(results: dict) -> str:
    runs = results["runs"]
    baseline = [r["seconds_per_step"] for r in next(iter(runs.values()))]
    steps = results["args"]["steps"]
    rows = []
    for name, repeats in runs.items():
        seconds = [r["seconds_per_step"] for r in repeats]
        after = [r["rss_after_step_mb"] for r in repeats]
        middle = steps // 2
        rows.append([
            name,
            f"{statistics.median(a[0] for a in after):.0f}",
            f"{statistics.median(a[middle - 1] for a in after):.0f}",
            f"{statistics.median(a[-1] for a in after):.0f}",
            f"{statistics.median(r['peak_mb'] for r in repeats):.0f}",
            f"{spread(seconds)['median']:.2f}",
            fmt_ratio(paired_ratio(baseline, seconds)),
        ])  # fmt: skip
    header = ["variant", "RSS after step 1 MB", f"after step {steps // 2}",
              f"after step {steps}", "peak MB", "s/step", "speed vs before"]  # fmt: skip
    return "\n".join([
        environment_block(results["environment"],
                          target="python -m bench.bench_step_memory"),  # fmt: skip
        f"The demo recipe (`configs/gemma-3-270m-cpu.yaml`) for {steps} steps per process, "
        f"{results['args']['repeats']} processes per variant, alternating; medians over them. "
        "'kept': freed memory stays in glibc's heap (the trainer before it called "
        "`malloc_trim`); 'returned': it goes back to the OS after every step. 'cache N': "
        "`ONEDNN_PRIMITIVE_CACHE_CAPACITY` (oneDNN's default 1024). Speed: the first "
        "variant's seconds per step over the variant's, per repeat, median (min-max). RSS "
        "after step k: at the end of its backward pass (gradients held); peak: the largest "
        "of all steps.",
        "",
        table(header, rows),
    ]) + "\n"  # fmt: skip


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="training steps per process")
    parser.add_argument("--repeats", type=int, default=2, help="processes per variant")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the runs and probe logs here (default: a temporary folder); "
                        "runs whose logs are complete are read, not rerun")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    print(publish(NAME, HEADING, measure(parser().parse_args(argv)), render))


if __name__ == "__main__":
    main()
