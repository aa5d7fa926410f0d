"""Ablation results: ``results.csv``, ``report.md`` and the plots, read from a sweep's files.

Everything here is recomputed from ``DIR/runs/*/result.json``, ``log.jsonl`` and
``DIR/base-model/*.json``, so a report can be rebuilt at any point of a sweep.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmembed.data import ALL_TASKS
from lmembed.evaluation.sts import STSResult
from lmembed.experiments.sweep import LOCATIONS, Sweep, embedding_key, read_record, show_value
from lmembed.io import atomic_write_bytes, atomic_write_text
from lmembed.system import machine_summary
from lmembed.training.config import TrainConfig
from lmembed.training.run_dir import read_metrics

PAPER_STEPS, PAPER_BATCH = 1000, 32
PLOTS = ("ablation-average.png", "ablation-tasks.png", "ablation-loss.png")


@dataclass
class _Row:
    """One line of results.csv and of a study table."""

    study: str
    name: str
    folder: str  # "" for a base-model row
    options: dict[str, Any]  # values of the sweep's varied options that apply to this row
    changed: tuple[str, ...]  # the options this setting overrides
    embedding: str  # ``_embedding_key`` of the row's embedding function
    record: dict[str, Any] | None  # None: not run yet
    base: dict[str, Any] | None = None  # the base model's record with the same embedding

    @property
    def status(self) -> str:
        return self.record["status"] if self.record else "pending"

    def score(self, task: str | None) -> float | None:
        """Spearman x100 on ``task``, or the average when ``task`` is None."""
        return _score(self.record, task)


def _score(record: dict[str, Any] | None, task: str | None) -> float | None:
    if not record or record.get("status") != "ok":
        return None
    return STSResult.from_dict(record["eval"]).score(task or "average")


def _rows(sweep: Sweep) -> tuple[list[_Row], list[_Row]]:
    """(base-model rows, run rows in plan order), read from the files on disk."""
    base_rows = []
    for embedding in sweep.embeddings():
        path = sweep.base_record_path(embedding)
        options = {k: embedding[k] for k in sweep.varied if k in embedding}
        key = json.dumps(embedding, sort_keys=True)
        name = _embedding_name(sweep, embedding)
        record = read_record(path)
        base_rows.append(_Row("base-model", name, "", options, (), key, record))
    bases = {row.embedding: row.record for row in base_rows}
    run_rows = []
    for setting in sweep.settings:
        config = sweep.configs[setting.folder]
        path = sweep.run_record_path(setting.folder)
        key = embedding_key(config)
        run_rows.append(
            _Row(
                setting.study,
                setting.name,
                setting.folder,
                {k: config.to_dict()[k] for k in sweep.varied},
                tuple(setting.overrides),
                key,
                read_record(path),
                bases.get(key),
            )
        )
    return base_rows, run_rows


def _embedding_name(sweep: Sweep, embedding: dict[str, Any]) -> str:
    base = sweep.base.to_dict()
    changed = [f"{k}={show_value(v)}" for k, v in embedding.items() if base.get(k) != v]
    return "base model" + (f" ({', '.join(changed)})" if changed else "")


def write_outputs(sweep: Sweep, command: str, plots: bool = False) -> Path:
    """results.csv, report.md and (at the end, they take seconds) the plots, atomically."""
    base_rows, run_rows = _rows(sweep)
    atomic_write_text(sweep.output / "results.csv", _csv(sweep, base_rows + run_rows))
    charts = (_average_chart, _task_chart, _loss_chart) if plots else ()
    for name, chart in zip(PLOTS, charts, strict=False):
        atomic_write_bytes(sweep.output / name, chart(sweep, base_rows, run_rows))
    report = sweep.output / "report.md"
    atomic_write_text(report, _report(sweep, base_rows, run_rows, command))
    return report


def _csv(sweep: Sweep, rows: list[_Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "study",
            "name",
            "run",
            *sweep.varied,
            "status",
            *sweep.tasks,
            "average",
            "train_s",
            "final_loss",
            "error",
        ]
    )
    for row in rows:
        record = row.record or {}
        writer.writerow([
            row.study, row.name, row.folder,
            *(show_value(row.options[k]) if k in row.options else "" for k in sweep.varied),
            row.status,
            *(_cell(row.score(t)) for t in sweep.tasks),
            _cell(row.score(None)),
            _cell(record.get("train_s")), _cell(record.get("final_loss")),
            record.get("error") or "",
        ])  # fmt: skip
    return buffer.getvalue()


def _cell(value: float | None) -> str:
    """A measured number: 4 decimals, empty when there is none."""
    if value is None:
        return ""
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def _report(sweep: Sweep, base_rows: list[_Row], run_rows: list[_Row], command: str) -> str:
    unique = {r.folder: r for r in run_rows}
    records = [r.record for r in base_rows + list(unique.values()) if r.record]
    done = [r for r in unique.values() if r.record]
    lines = [
        f"# Ablation: {Path(sweep.source).name} on `{sweep.base.embedding.model}`",
        "",
        *([sweep.note.strip(), ""] if sweep.note else []),
        f"- **command**: `{command}`",
        f"- **setting**: {_setting_text(sweep)}",
        f"- **base config**: {_options_text(sweep.base)}",
        f"- **hardware**: {machine_summary()}, torch {torch.__version__}",
        f"- **runs**: {len(sweep.settings)} settings in {len({r.study for r in run_rows})} "
        f"studies share {len(unique)} training runs (identical configs train once); "
        f"{sum(r.status == 'ok' for r in done)} ok, {sum(r.status == 'failed' for r in done)} "
        f"failed, {len(unique) - len(done)} pending",
        f"- **time**: {_time_text(records)}",
        "",
        "Scores are Spearman x100 of cosine similarity with the gold scores. *base model* is "
        "the model without an adapter, embedded with the same prompt and pooling as the run "
        "(Δ base = run - base model). *train s* is the summed step time from `log.jsonl`.",
        "",
    ]
    for study in dict.fromkeys(r.study for r in run_rows):
        lines += _study_table(sweep, study, base_rows, [r for r in run_rows if r.study == study])
    failed = [r for r in base_rows + list(unique.values()) if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- `{r.folder or r.name}`: {r.record['error']}" for r in failed]
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{name}]({name})" for name in PLOTS]
    return "\n".join(lines) + "\n"


def _study_table(sweep: Sweep, study: str, base_rows: list[_Row], rows: list[_Row]) -> list[str]:
    varied = list(dict.fromkeys(k for r in rows for k in r.changed))
    bases = [b for b in base_rows if b.embedding in {r.embedding for r in rows}]
    header = [
        "setting",
        "run",
        *varied,
        *sweep.tasks,
        "average",
        "Δ base",
        "train s",
        "final loss",
        "status",
    ]
    lines = [
        f"## Study: {study}",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---|" * len(varied) + "---:|" * (len(sweep.tasks) + 4) + "---|",
    ]
    for row in [*bases, *rows]:
        is_base = row.study == "base-model"
        average, reference = row.score(None), None if is_base else _score(row.base, None)
        record = row.record or {}
        cells = [
            f"*{row.name}*" if is_base else row.name,
            "–" if is_base else f"`{row.folder}`",
            *(_option(row.options[k]) if k in row.options else "–" for k in varied),
            *(_md(row.score(t)) for t in sweep.tasks),
            f"**{_md(average)}**",
            "–" if average is None or reference is None else f"{average - reference:+.2f}",
            _md(record.get("train_s"), "–"),
            _md(record.get("final_loss"), "–", digits=4),
            row.status,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if varied == ["seed"]:
        lines += ["", _seed_spread(rows)]
    return [*lines, ""]


def _seed_averages(rows: list[_Row]) -> list[float]:
    """Averages of the finished runs that change nothing but the seed."""
    return [v for r in rows if r.changed == ("seed",) and (v := r.score(None)) is not None]


def _seed_spread(rows: list[_Row]) -> str:
    """A seed-only study measures noise: how far the average moves with nothing else changed."""
    averages = _seed_averages(rows)
    if len(averages) < 2:
        return "Seed spread: needs two finished seeds."
    return (
        f"Seed spread of the average over {len(averages)} seeds: mean {np.mean(averages):.2f}, "
        f"standard deviation {np.std(averages, ddof=1):.2f}, range "
        f"{min(averages):.2f}–{max(averages):.2f} ({max(averages) - min(averages):.2f} points). "
        "Differences between settings smaller than this range are within run-to-run noise."
    )


def _md(value: float | None, empty: str = "–", digits: int = 2) -> str:
    if value is None:
        return empty
    return f"{value:.{digits}f}" if math.isfinite(value) else "nan"


def _option(value: Any) -> str:
    """An option value in a table cell; strings quoted so a prompt's spaces show."""
    return f"`{value!r}`" if isinstance(value, str) else show_value(value)


def _setting_text(sweep: Sweep) -> str:
    base = sweep.base
    length = f"{base.steps} steps" if base.epochs is None else f"{base.epochs} epochs"
    text = (
        f"{length} x {base.batch_size} triplets from `{', '.join(base.dataset.data)}`, lr "
        f"{base.lr:g}, {base.embedding.dtype}; tasks: {', '.join(sweep.tasks)} "
        f"({len(sweep.tasks)} of the {len(ALL_TASKS)} paper tasks)"
    )
    reduced = (
        base.epochs is None and (base.steps or 0) * base.batch_size < PAPER_STEPS * PAPER_BATCH
    ) or not set(ALL_TASKS) <= set(sweep.tasks)
    if reduced:
        text += (
            f". **Reduced setting**: the paper trains {PAPER_STEPS} steps x {PAPER_BATCH} and "
            f"scores all {len(ALL_TASKS)} tasks, so effects smaller than the noise of a "
            "short run may not show"
        )
    return text


def _options_text(config: TrainConfig) -> str:
    """The options that differ from ``TrainConfig``'s defaults (the paper's)."""
    defaults = TrainConfig().to_dict()
    changed = {k: v for k, v in config.to_dict().items() if v != defaults[k] and k not in LOCATIONS}
    return ", ".join(f"{k}={show_value(v)}" for k, v in changed.items()) or "the paper's defaults"


def _time_text(records: list[dict[str, Any]]) -> str:
    if not records:
        return "nothing has run yet"
    compute = sum(r.get("wall_s", 0.0) for r in records) / 60
    return (
        f"{compute:.1f} min of compute (training + scoring, summed over runs and base-model "
        f"scorings, excluding waits for the CPU lock); last run finished "
        f"{max(r['finished_at'] for r in records)}"
    )


def _panels(run_rows: list[_Row], width: float = 4.6) -> tuple[Any, list[tuple[Any, str, list]]]:
    """A figure with one panel per study, up to three per line: (axes, study, rows) each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    studies: dict[str, list[_Row]] = {}
    for row in run_rows:
        studies.setdefault(row.study, []).append(row)
    cols = min(3, max(1, len(studies)))
    lines = math.ceil(max(1, len(studies)) / cols)
    fig = Figure(figsize=(width * cols, 3.6 * lines + 0.5), dpi=110)
    FigureCanvasAgg(fig)
    panels = []
    for i, (study, rows) in enumerate(studies.items()):
        ax = fig.add_subplot(lines, cols, i + 1)
        ax.set_title(f"study: {study}", fontsize=10)
        panels.append((ax, study, rows))
    return fig, panels


def _png(fig: Any, title: str) -> bytes:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05 if fig.legends else 0, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def _average_chart(sweep: Sweep, base_rows: list[_Row], run_rows: list[_Row]) -> bytes:
    """Average per setting, one panel per study; a black bar marks the base model and a
    grey band the seed study's range (how far the base setting moves by chance)."""
    fig, panels = _panels(run_rows)
    values = [v for r in run_rows + base_rows if (v := r.score(None)) is not None]
    low, high = min([0.0, *values]), max([1.0, *values])
    pad = 0.15 * (high - low)
    seeds = _seed_averages(run_rows)
    for ax, _, rows in panels:
        x = np.arange(len(rows))
        if len(seeds) > 1:
            ax.axhspan(min(seeds), max(seeds), color="#333333", alpha=0.3, zorder=2.5,
                       label=f"seed range, {len(seeds)} seeds of the base setting")  # fmt: skip
        averages = [r.score(None) for r in rows]
        bars = ax.bar(x, [_nan(v) for v in averages], 0.6, color="#2f6fdf", alpha=0.85,
                      label="fine-tuned")  # fmt: skip
        ax.bar_label(bars, labels=[_md(v, "") for v in averages], fontsize=7, padding=1)
        for i, row in enumerate(rows):
            if row.status != "ok":
                ax.text(i, 0, row.status, ha="center", va="bottom", color="#c0392b", fontsize=8)
        bases = [_nan(_score(r.base, None)) for r in rows]
        ax.scatter(x, bases, marker="_", s=900, linewidths=2.5, color="black", zorder=3,
                   label="base model, same prompt and pooling")  # fmt: skip
        ax.set_xticks(x, [r.name for r in rows], rotation=25, ha="right", fontsize=8)
        ax.set_ylim(low - (pad if low < 0 else 0), high + pad)
        ax.grid(axis="y", alpha=0.3)
    if panels:
        panels[0][0].set_ylabel("Spearman x100, average")
        handles, labels = panels[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False,
                   markerscale=0.4)  # fmt: skip
    return _png(fig, f"average over {', '.join(sweep.tasks)}")


def _task_chart(sweep: Sweep, base_rows: list[_Row], run_rows: list[_Row]) -> bytes:
    """Per-task scores: one panel per study, a bar per setting in every task group."""
    fig, panels = _panels(run_rows, width=5.2)
    names = [*sweep.tasks, "average"]
    x = np.arange(len(names))
    for ax, _, rows in panels:
        width = 0.8 / len(rows)
        for i, row in enumerate(rows):
            scores = [row.score(None if n == "average" else n) for n in names]
            ax.bar(x - 0.4 + width * (i + 0.5), [_nan(v) for v in scores], width, label=row.name)
        ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.grid(axis="y", alpha=0.3)
    if panels:
        panels[0][0].set_ylabel("Spearman x100")
    return _png(fig, "STS scores per task")


def _loss_chart(sweep: Sweep, base_rows: list[_Row], run_rows: list[_Row]) -> bytes:
    """Training loss per step from each run's ``log.jsonl``, overlaid per study."""
    fig, panels = _panels(run_rows)
    for ax, _, rows in panels:
        for row in rows:
            steps = read_metrics(sweep.run_dir(row.folder) / "log.jsonl")
            if steps:
                losses = [s["loss"] for s in steps]
                ax.plot([s["step"] for s in steps], losses, label=row.name, linewidth=1.2)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if panels:
        panels[0][0].set_ylabel(f"training loss ({sweep.base.loss})")
    return _png(fig, "training loss")
