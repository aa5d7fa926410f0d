"""Issue 34's distillation study: publish its runs into ``docs/results/distill`` and render
docs/quality.md's tables from those files (tests/test_published_numbers.py checks them).

The runs are made by the commands in ``ablations/cpu-distill.yaml`` (the STSb dev sweep,
then the same runs on the nine test sets) and ``lmembed eval --tasks stsb-paraphrase`` on
each adapter and on all-MiniLM-L6-v2 (``--output runs/distill-retrieval/<run>.json``):

    python -m bench.diagnostics.distill_results --time-teacher  # teacher-cold.json
    python -m bench.diagnostics.distill_results --publish   # copy runs/ into docs/results
    python -m bench.diagnostics.distill_results             # print the tables

The sweep's teacher runs share one teacher cache, so only the first pays for its texts;
``--time-teacher`` measures each teacher run's encoding from an empty cache (a temporary
``$LMEMBED_CACHE``), which is what each run costs on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.common import ROOT, data_dir
from bench.diagnostics.published_runs import NINE_TASK_HEADER, nine_task_row, publish_sweep
from lmembed.data.sts import ALL_TASKS
from lmembed.evaluation import STSResult
from lmembed.experiments.sweep import load_sweep
from lmembed.io import atomic_write_json
from lmembed.training.distributed import Distributed
from lmembed.training.teacher import prepare_teacher
from lmembed.training.trainer import training_batches

SWEEP = ROOT / "ablations" / "cpu-distill.yaml"
RESULTS = ROOT / "docs" / "results" / "distill"
TEACHER_NINE = ROOT / "docs" / "results" / "baselines" / "all-minilm-l6-v2-nine.json"
TEACHER_RETRIEVAL = "all-minilm-l6-v2-stsb-paraphrase.json"
ARMS = {  # run-name prefix -> row label
    "recipe": "30-minute recipe, no teacher (140 steps)",
    "teacher": "with the MiniLM teacher (138 steps)",
}
SEEDS = (42, 7, 1234)  # the sweep's; the tables show those published for both arms


def publish(dev: Path, nine: Path, retrieval: Path, target: Path = RESULTS) -> None:
    """Copy each run's scores (STSb dev, nine tasks, paraphrase retrieval), its curves and
    options into ``target/<run name>/``; a run not yet scored on both sets is left out."""
    scored = {"stsb-dev.json": dev, "nine.json": nine}
    for name, folder in publish_sweep(SWEEP, scored, target).items():
        shutil.copy(retrieval / f"{folder}.json", target / name / "stsb-paraphrase.json")
    shutil.copy(retrieval / "all-minilm-l6-v2.json", target / TEACHER_RETRIEVAL)
    shutil.copy(dev / "report.md", target / "stsb-dev-report.md")
    shutil.copy(nine / "report.md", target / "nine-report.md")


def time_teacher(target: Path = RESULTS) -> dict[str, dict]:
    """Each teacher run's texts embedded from an empty cache: ``target/teacher-cold.json``."""
    from lmembed.data.training import load_training_data

    sweep = load_sweep(SWEEP, ROOT / "runs" / "distill", data_dir=data_dir())
    timings = {}
    for setting in sweep.settings:
        config = sweep.configs[setting.folder]
        if config.distill.teacher is None:
            continue
        batches = training_batches(config, load_training_data(config.dataset), config.steps)
        with tempfile.TemporaryDirectory() as empty:
            os.environ["LMEMBED_CACHE"] = empty
            try:
                teacher = prepare_teacher(config.distill, batches, Distributed())
            finally:
                del os.environ["LMEMBED_CACHE"]
        timings[setting.name] = {**teacher.summary(), "cache": "(empty, temporary)"}
    atomic_write_json(target / "teacher-cold.json", timings)
    return timings


def published_seeds(results: Path = RESULTS) -> list[int]:
    """The seeds whose runs are published for every arm."""
    return [s for s in SEEDS if all((results / f"{a}-s{s}" / "nine.json").is_file() for a in ARMS)]


def _nine(run: str, results: Path) -> STSResult:
    return STSResult.load(results / run / "nine.json")


def nine_task_table(results: Path = RESULTS) -> str:
    """Per seed and the mean over seeds (± sd of the average) for each arm, and the teacher."""
    seeds = published_seeds(results)
    lines = [NINE_TASK_HEADER]
    for arm, label in ARMS.items():
        paths = [results / f"{arm}-s{seed}" / "nine.json" for seed in seeds]
        lines += [
            nine_task_row(f"{label}, seed {s}", [p]) for s, p in zip(seeds, paths, strict=True)
        ]
        lines.append(nine_task_row(f"**{label}, mean**", paths))
    lines.append(nine_task_row("all-MiniLM-L6-v2 (the teacher)", [TEACHER_NINE]))
    return "\n".join(lines)


def _ndcg(path: Path) -> float:
    return json.loads(path.read_text(encoding="utf-8"))["tasks"]["stsb-paraphrase"]["ndcg@10"]


def summary_table(results: Path = RESULTS) -> str:
    """Per arm, means over the seeds: STSb dev (the selection set), the nine-task average, tasks
    above the teacher, paraphrase retrieval, and the time the runs took."""
    teacher = STSResult.load(TEACHER_NINE)
    cold = json.loads((results / "teacher-cold.json").read_text(encoding="utf-8"))
    cold_arms = {name.rsplit("-s", 1)[0] for name in cold}
    lines = [
        "| | STSb dev | avg 9 | tasks above MiniLM (of 9, on the mean) | stsb-paraphrase "
        "NDCG@10 | steps | summed step time (s) | teacher encoding (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    seeds = published_seeds(results)
    for arm, label in ARMS.items():
        names = [f"{arm}-s{seed}" for seed in seeds]
        dev = statistics.mean(STSResult.load(results / n / "stsb-dev.json").score("stsb-dev")
                              for n in names)  # fmt: skip
        nine = [_nine(n, results) for n in names]
        above = sum(statistics.mean(r.score(t) for r in nine) > teacher.score(t) for t in ALL_TASKS)
        ndcg = statistics.mean(_ndcg(results / n / "stsb-paraphrase.json") for n in names)
        runs = [json.loads((results / n / "run.json").read_text()) for n in names]
        train_s = statistics.mean(r["train_s"] for r in runs)
        shown = (
            "–"
            if arm not in cold_arms
            else f"{statistics.mean(cold[n]['seconds'] for n in names):.1f}"
        )
        lines.append(
            f"| {label} | {dev:.2f} | {statistics.mean(r.score('average') for r in nine):.2f} | "
            f"{above} | {ndcg:.2f} | {runs[0]['steps_done']} | {train_s:.0f} | {shown} |"
        )
    ndcg = _ndcg(results / TEACHER_RETRIEVAL)
    lines.append(f"| all-MiniLM-L6-v2 (the teacher) | | {teacher.score('average'):.2f} | | "
                 f"{ndcg:.2f} | | | |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-teacher", action="store_true", help="time cold teacher fills")
    parser.add_argument("--publish", action="store_true", help="copy the runs first")
    parser.add_argument("--dev", type=Path, default=ROOT / "runs" / "distill")
    parser.add_argument("--nine", type=Path, default=ROOT / "runs" / "distill-nine")
    parser.add_argument("--retrieval", type=Path, default=ROOT / "runs" / "distill-retrieval")
    args = parser.parse_args()
    if args.time_teacher:
        print(json.dumps(time_teacher(), indent=1))
        return
    if args.publish:
        publish(args.dev, args.nine, args.retrieval)
    print(summary_table(), nine_task_table(), sep="\n\n")


if __name__ == "__main__":
    main()
