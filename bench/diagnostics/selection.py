"""The two STSb-dev selections behind the CPU recipes, published into
``docs/results/selection`` and rendered as docs/quality.md's tables (checked there by
tests/test_published_numbers.py).

- ``demo-budget/``: LoRA on every linear layer for 64 steps against q_proj/v_proj for 100
  steps, about the same wall time (``ablations/cpu-demo-equal-time.yaml``): `make demo`'s
  recipe.
- ``thirty-minute/``: q_proj/v_proj for 220 steps (``ablations/cpu-qv-220.yaml``, STSb dev)
  against every linear layer for 140 steps, whose runs
  are the distillation study's ``recipe-s*`` (``docs/results/distill``): the 30-minute
  recipe. ``last-step/`` holds STSb dev of each run's last-step adapter, which the weight
  average (``ema_decay``) is measured against.

    python -m bench.diagnostics.selection --publish   # copy runs/ into docs/results
    python -m bench.diagnostics.selection             # print the tables
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from bench.common import ROOT
from bench.diagnostics.published_runs import (
    NINE_TASK_HEADER,
    average_cell,
    nine_task_row,
    paired_seed_table,
    publish_sweep,
    score,
)
from lmembed.evaluation import STSResult

RESULTS = ROOT / "docs" / "results"
SELECTION = RESULTS / "selection"
SEEDS = [42, 7, 1234]
DEMO_SWEEP = ROOT / "ablations" / "cpu-demo-equal-time.yaml"
QV_SWEEP = ROOT / "ablations" / "cpu-qv-220.yaml"


def publish(runs: Path = ROOT / "runs", target: Path = SELECTION) -> None:
    """Copy the two sweeps' runs and the last-step scores (``runs/last-step/<run>.json``,
    made by ``lmembed eval --adapter <run>/last-step --tasks stsb-dev``)."""
    publish_sweep(DEMO_SWEEP, {"stsb-dev.json": runs / "demo-equal-time"}, target / "demo-budget")
    publish_sweep(QV_SWEEP, {"stsb-dev.json": runs / "qv-220"}, target / "thirty-minute")
    (target / "thirty-minute" / "last-step").mkdir(parents=True, exist_ok=True)
    for path in sorted((runs / "last-step").glob("*.json")):
        shutil.copy(path, target / "thirty-minute" / "last-step" / path.name)


def demo_budget_table(target: Path = SELECTION) -> str:
    folder = target / "demo-budget"
    return paired_seed_table(
        SEEDS,
        ("q/v, 100 steps", [folder / f"qv-100-s{seed}" for seed in SEEDS]),
        ("all linear, 64 steps", [folder / f"all-linear-64-s{seed}" for seed in SEEDS]),
    )


def thirty_minute_table(target: Path = SELECTION) -> str:
    return paired_seed_table(
        SEEDS,
        ("q/v, 220 steps", [target / "thirty-minute" / f"qv-220-s{seed}" for seed in SEEDS]),
        ("all linear, 140 steps", [RESULTS / "distill" / f"recipe-s{seed}" for seed in SEEDS]),
    )


def weight_average_table(target: Path = SELECTION) -> str:
    """STSb dev of the averaged adapter (what the recipe saves) against its last step."""
    runs = {f"q/v x 220, seed {s}": target / "thirty-minute" / f"qv-220-s{s}" for s in SEEDS}
    runs |= {f"all linear x 140, seed {s}": RESULTS / "distill" / f"recipe-s{s}" for s in SEEDS}
    lines = ["| run | averaged (EMA 0.95) | last step | difference |", "|---|---:|---:|---:|"]
    for label, run in runs.items():
        averaged = score(run)
        last = score(target / "thirty-minute" / "last-step", f"{run.name}.json")
        difference = round(averaged - last, 2) + 0.0  # no "-0.00"
        lines.append(f"| {label} | {averaged:.2f} | {last:.2f} | {difference:+.2f} |")
    return "\n".join(lines)


NINE_TASK_ROWS: dict[str, tuple[str, list[Path]]] = {  # key -> (row label, result files)
    "base-fp32": ("gemma-3-270m, base (fp32)", [RESULTS / "gpu-carry" / "packaged-fp32-nine.json"]),
    "base": ("gemma-3-270m, base (bf16)", [RESULTS / "baselines" / "gemma-3-270m-nine.json"]),
    "demo": ("`make demo`: all linear x 64, seed 42", [RESULTS / "demo" / "nine.json"]),
    "recipe": (
        "**30-minute recipe: all linear x 140, mean of 3 seeds**",
        [RESULTS / "distill" / f"recipe-s{seed}" / "nine.json" for seed in SEEDS],
    ),
    "teacher": (
        "**with the MiniLM teacher (`lmembed demo --full`), mean of 3 seeds**",
        [RESULTS / "distill" / f"teacher-s{seed}" / "nine.json" for seed in SEEDS],
    ),
    "minilm": (
        "all-MiniLM-L6-v2 (22M encoder)",
        [RESULTS / "baselines" / "all-minilm-l6-v2-nine.json"],
    ),
}


def _average(row: str) -> str:
    _, paths = NINE_TASK_ROWS[row]
    return average_cell([STSResult.load(path).score("average") for path in paths])


def nine_task_summary() -> str:
    """The quality page's headline: the recipes' nine-task averages beside the baselines."""
    recipe, teacher, base, demo, minilm = map(
        _average, ("recipe", "teacher", "base", "demo", "minilm")
    )
    return (
        "The 30-minute recipe (LoRA on every linear layer for 140 steps x 32, weights averaged)\n"
        f"scores **{recipe}** on the nine-task average (mean ± sd over seeds 42, 7 and 1234),\n"
        f"and **{teacher}** with all-MiniLM-L6-v2 as a teacher at the same wall time (`lmembed\n"
        f"demo --full`), against {base} for the base model, {demo} for `make demo`'s recipe\n"
        f"(seed 42) and {minilm} for all-MiniLM-L6-v2."
    )


def nine_task_table() -> str:
    rows = [nine_task_row(label, paths) for label, paths in NINE_TASK_ROWS.values()]
    return "\n".join([NINE_TASK_HEADER, *rows])


SEARCH_CSV = RESULTS / "sweeps" / "cpu-quality-fp32.csv"
SEARCH_ROWS = {  # the sweep's run name -> row label
    "seed=42": "demo recipe, seed 42 (no prompt, LoRA on q_proj/v_proj)",
    "seed=7": "demo recipe, seed 7",
    "seed=1234": "demo recipe, seed 1234",
    "is": "prompt `{s} is: ` (seed 42)",
    "prompteol": 'prompt `This sentence: "{s}" means in one word: "` (PromptEOL, seed 42)',
    "bidirectional-mean": "bidirectional attention + mean pooling (`--attention "
    "bidirectional --pooling mean`, seed 42)",
    "all-linear": "LoRA on all linear layers (`--lora-targets all-linear`, seed 42)",
    "t0.02": "temperature 0.02 (`--temperature 0.02`, seed 42)",
}


def search_table(path: Path = SEARCH_CSV) -> str:
    """The q/v demo recipe's levers on STSb dev (``ablations/cpu-quality.yaml``'s
    ``results.csv``), each beside the untrained model with the same embedding options."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    embedding = ("prompt", "attention", "pooling")
    base = {tuple(r[k] for k in embedding): r for r in rows if r["study"] == "base-model"}
    lines = [
        "| setting | STSb dev | base model, same prompt | train s | final loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in (r for r in rows if r["study"] != "base-model"):
        untrained = base[tuple(row[k] for k in embedding)]["stsb-dev"]
        lines.append(
            f"| {SEARCH_ROWS[row['name']]} | {float(row['stsb-dev']):.2f} | "
            f"{float(untrained):.2f} | {float(row['train_s']):.0f} | "
            f"{float(row['final_loss']):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publish", action="store_true", help="copy the runs first")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="the sweeps' parent")
    args = parser.parse_args()
    if args.publish:
        publish(args.runs)
    tables = (
        demo_budget_table,
        thirty_minute_table,
        weight_average_table,
        search_table,
        nine_task_table,
    )
    print(*(table() for table in tables), sep="\n\n")


if __name__ == "__main__":
    main()
