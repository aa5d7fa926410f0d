"""A training run's own report: ``report.md`` and ``report.png`` in the run folder.

The PNG has the training loss against step and, per eval task, each of its metrics
against step, with the kept best step marked; the markdown has the same evaluations
as a table. Both are rebuilt from the run's files (``log.jsonl``, ``eval.jsonl``,
``best.json``), so ``write_run_report`` can be called on any run folder.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from lmembed.io import atomic_write_bytes, atomic_write_text
from lmembed.training.evaluator import split_metric
from lmembed.training.run_dir import RunDir


def write_run_report(run: RunDir, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.png`` into the run folder; returns both paths."""
    steps, evaluations, best = run.metrics(), run.evaluations(), run.best()
    title = title or f"lmembed training run: {run.path.name}"
    atomic_write_bytes(run.report_png, curves_png(steps, evaluations, best, title))
    atomic_write_text(run.report_md, _markdown(run, steps, evaluations, best, title))
    return run.report_md, run.report_png


def task_groups(metric_names: list[str]) -> dict[str, list[str]]:
    """``{task: [its metric names]}``: each main metric (the bare task name, which may be a
    path) comes before its task's ``task/metric`` names."""
    groups: dict[str, list[str]] = {}
    for name in metric_names:
        groups.setdefault(split_metric(name, metric_names)[0], []).append(name)
    return groups


def curves_png(
    steps: list[dict[str, Any]],
    evaluations: list[dict[str, Any]],
    best: dict[str, Any] | None,
    title: str,
) -> bytes:
    """Loss against step, then one panel per eval task with its metrics; PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = task_groups(list(evaluations[0]["metrics"])) if evaluations else {}
    panels = 1 + len(groups)
    fig = Figure(figsize=(6.5, 2.6 * panels), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], color="#2f6fdf", lw=1)
    axes[0].set_ylabel("train loss")
    axes[0].set_title(title)
    x = [e["step"] for e in evaluations]
    for ax, (task, names) in zip(axes[1:], groups.items(), strict=True):
        for name in names:
            label = f"{name} (main)" if name == task else name.removeprefix(f"{task}/")
            ax.plot(x, [e["metrics"][name] for e in evaluations], marker="o", ms=3, label=label)
        ax.set_ylabel(f"{task} (x100)")
        ax.legend(fontsize=7, frameon=False)
    if best is not None:
        for ax in axes:
            ax.axvline(best["step"], color="black", ls=":", lw=1)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _markdown(
    run: RunDir,
    steps: list[dict[str, Any]],
    evaluations: list[dict[str, Any]],
    best: dict[str, Any] | None,
    title: str,
) -> str:
    lines = [f"# {title}", ""]
    if steps:
        last = steps[-1]
        lines.append(f"- steps: {last['step']}, final loss {last['loss']:.4f}")
    if evaluations:
        seconds = sum(e["seconds"] for e in evaluations)
        lines.append(f"- evaluations: {len(evaluations)}, {seconds:.1f} s in all")
    if best is not None:
        lines.append(
            f"- best: step {best['step']}, {best['metric']} {best['score']:.2f} (the adapter "
            f"in this folder; the final step's is in `{run.last.name}/`)"
        )
    lines += ["", f"![loss and eval metrics against step]({run.report_png.name})", ""]
    if evaluations:
        names = list(evaluations[0]["metrics"])
        lines += ["| step | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for e in evaluations:
            mark = " (best)" if best is not None and e["step"] == best["step"] else ""
            cells = " | ".join(f"{e['metrics'][n]:.2f}" for n in names)
            lines.append(f"| {e['step']}{mark} | {cells} |")
        lines.append("")
    return "\n".join(lines)
