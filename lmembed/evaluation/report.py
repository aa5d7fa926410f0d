"""Before/after report of a fine-tuning run: a markdown table and a bar chart."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lmembed.evaluation.sts import STSResult, common_tasks, format_score
from lmembed.io import atomic_write_bytes, atomic_write_text


def write_report(
    out_dir: str | Path,
    before: STSResult,
    after: STSResult,
    baseline: STSResult | None = None,
    title: str = "lmembed STS report",
    notes: Mapping[str, str] | None = None,
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.png`` into ``out_dir``; returns both paths.

    ``before``/``after``/``baseline`` are ``evaluate`` results; ``baseline`` is usually a
    published reference. ``notes`` (e.g. command, steps, hardware) become a bullet list.
    Scores shown are Spearman x100.
    """
    out = Path(out_dir)
    md_path, png_path = out / "report.md", out / "report.png"
    names = list(after.tasks) + [n for n in before.tasks if n not in after.tasks]
    table = _Table(names, before, after, baseline)
    atomic_write_bytes(png_path, _chart(table, before, after, baseline, title))
    atomic_write_text(md_path, _markdown(table, before, after, baseline, title, notes, png_path))
    return md_path, png_path


class _Table:
    """Spearman per task and row, where "average" is over the tasks every result has,
    so before, after and baseline are averaged over the same set."""

    def __init__(self, names: list[str], *results: STSResult | None) -> None:
        self.common = [n for n in common_tasks(*results) if n in names]
        self.rows = [*names, "average"]

    def value(self, result: STSResult | None, name: str) -> float | None:
        if result is None:
            return None
        if name == "average":
            return result.average_over(self.common)
        return result.score(name)


def _markdown(
    table: _Table,
    before: STSResult,
    after: STSResult,
    baseline: STSResult | None,
    title: str,
    notes: Mapping[str, str] | None,
    png_path: Path,
) -> str:
    header = ["task", "before", "after", "Δ"] + (["baseline"] if baseline else [])
    lines = [
        f"# {title}",
        "",
        f"- before: {_describe(before)}",
        f"- after: {_describe(after)}",
    ]
    if baseline:
        lines.append(f"- baseline: {_describe(baseline)}")
    lines += [
        "",
        "Spearman correlation x100 of cosine similarity with the gold scores.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for name in table.rows:
        old, new = table.value(before, name), table.value(after, name)
        label = f"**average** ({len(table.common)} tasks)" if name == "average" else name
        cells = [label, format_score(old), format_score(new)]
        cells.append("–" if old is None or new is None else f"{new - old:+.2f}")
        if baseline:
            cells.append(format_score(table.value(baseline, name)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![STS scores before and after]({png_path.name})", ""]
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- **{key}**: {value}" for key, value in notes.items()]
        lines.append("")
    return "\n".join(lines)


def _describe(result: STSResult) -> str:
    spec = result.spec
    text = f"`{spec.get('model')}`"
    if spec.get("adapter"):
        text += f" + adapter `{spec['adapter']}`"
    extras = [f"{k}={spec[k]}" for k in ("pooling", "prompt", "max_length") if spec.get(k)]
    return f"{text} ({', '.join(extras)})" if extras else text


def _chart(
    table: _Table, before: STSResult, after: STSResult, baseline: STSResult | None, title: str
) -> bytes:
    """Grouped bars per task; baseline as a black tick over each group. PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = table.rows
    x = np.arange(len(rows))
    width = 0.38
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for offset, result, label, color in (
        (-width / 2, before, "before", "#9aa5b1"),
        (width / 2, after, "after", "#2f6fdf"),
    ):
        values = [table.value(result, n) for n in rows]
        bars = ax.bar(
            x + offset,
            [np.nan if v is None else v for v in values],
            width,
            label=label,
            color=color,
        )
        ax.bar_label(bars, labels=[format_score(v) for v in values], fontsize=6, padding=1)
    if baseline:
        marks = [table.value(baseline, n) for n in rows]
        ax.scatter(
            x,
            [np.nan if v is None else v for v in marks],
            marker="_",
            s=600,
            color="black",
            linewidths=2,
            label="baseline",
            zorder=3,
        )
    ax.set_xticks(x, rows, rotation=30, ha="right")
    ax.set_ylabel("Spearman x100")
    ax.set_ylim(min(0.0, *ax.get_ylim()), 100)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
