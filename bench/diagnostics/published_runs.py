"""Copy a sweep's finished runs into ``docs/results`` and read them back as tables: the
shared part of the studies that docs/quality.md quotes (``selection``, ``distill_results``).

A published run is a folder ``<target>/<run name>/`` holding its scores (one STS result
file per scored sweep), ``run.json`` (steps, final loss, summed step time, end time) and
the run's curves and options, so every figure the page shows is read from git.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from bench.common import data_dir
from lmembed.data.sts import ALL_TASKS
from lmembed.evaluation import STSResult
from lmembed.experiments.sweep import load_sweep, read_record
from lmembed.io import atomic_write_json

NINE_TASK_HEADER = f"| | {' | '.join(ALL_TASKS)} | **avg 9** |\n|---|" + "---:|" * 10
COPIED = ("eval.jsonl", "log.jsonl", "train_config.json", "teacher.json")
RUN_SUMMARY = ("steps_done", "final_loss", "train_s", "finished_at")


def publish_sweep(sweep_yaml: Path, scored: dict[str, Path], target: Path) -> dict[str, str]:
    """Copy each run of ``sweep_yaml`` into ``target/<run name>/``: for each ``file name ->
    sweep output folder`` of ``scored`` (the first is the one that trained) the run's
    scores there, plus ``run.json`` and the files in ``COPIED``. A run not yet scored in
    every folder is left out. Returns the published runs, name -> run folder."""
    first = next(iter(scored.values()))
    sweep = load_sweep(sweep_yaml, first, data_dir=data_dir())
    published = {}
    for setting in sweep.settings:
        folders = [output / "runs" / setting.folder for output in scored.values()]
        records = [read_record(folder / "result.json") for folder in folders]
        if any(r is None or r["status"] != "ok" for r in records):
            print(f"{setting.name}: not scored in every sweep yet, left out")
            continue
        out = target / setting.name
        out.mkdir(parents=True, exist_ok=True)
        for record, name in zip(records, scored, strict=True):
            STSResult.from_dict(record["eval"]).save(out / name)
        atomic_write_json(out / "run.json", {k: records[0][k] for k in RUN_SUMMARY})
        for name in COPIED:
            if (folders[0] / name).is_file():
                shutil.copy(folders[0] / name, out / name)
        published[setting.name] = setting.folder
    return published


def score(run: Path, file: str = "stsb-dev.json", task: str | None = None) -> float:
    """One published score: ``task`` (default: the file's only or average task)."""
    result = STSResult.load(run / file)
    return result.score(task or ("average" if len(result.tasks) > 1 else next(iter(result.tasks))))


def train_seconds(run: Path) -> float:
    return json.loads((run / "run.json").read_text(encoding="utf-8"))["train_s"]


def spread(values: list[float]) -> str:
    """``mean (sd; range)``, how the pages state a seed study."""
    return (f"{statistics.mean(values):.2f} ({statistics.stdev(values):.2f}; "
            f"{max(values) - min(values):.2f})")  # fmt: skip


def paired_seed_table(
    seeds: list[int], baseline: tuple[str, list[Path]], candidate: tuple[str, list[Path]]
) -> str:
    """STSb dev and summed step time per seed for two arms trained on the same batches,
    the gain per seed, and each arm's mean (sd; range) over the seeds."""
    (base_label, base_runs), (label, runs) = baseline, candidate
    lines = [
        f"| seed | {base_label}: STSb dev | train s | {label}: STSb dev | train s | gain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for seed, base, run in zip(seeds, base_runs, runs, strict=True):
        lines.append(
            f"| {seed} | {score(base):.2f} | {train_seconds(base):,.0f} | {score(run):.2f} | "
            f"{train_seconds(run):,.0f} | {score(run) - score(base):+.2f} |"
        )
    base_scores, scores = [score(r) for r in base_runs], [score(r) for r in runs]
    gain = statistics.mean(scores) - statistics.mean(base_scores)
    lines.append(f"| mean (sd; range) | {spread(base_scores)} | | **{spread(scores)}** | | "
                 f"**{gain:+.2f}** |")  # fmt: skip
    return "\n".join(lines)


def average_cell(averages: list[float]) -> str:
    """One score as is; several as ``mean ± sd``."""
    mean = f"{statistics.mean(averages):.2f}"
    return mean if len(averages) == 1 else f"{mean} ± {statistics.stdev(averages):.2f}"


def nine_task_row(label: str, paths: list[Path]) -> str:
    """A nine-task table row: per-task means over the result files, and their average."""
    results = [STSResult.load(path) for path in paths]
    cells = [f"{statistics.mean(r.score(task) for r in results):.2f}" for task in ALL_TASKS]
    average = average_cell([r.score("average") for r in results])
    return f"| {label} | {' | '.join(cells)} | **{average}** |"
