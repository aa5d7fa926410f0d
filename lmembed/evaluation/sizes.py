"""Quality against size: every task scored at each dims x precision, in one table and one plot.

``SizedEncoder`` wraps an encoder: it truncates to ``dims``, re-normalises,
quantises, and hands back unit float vectors whose cosine *is* the quantised
similarity (``lmembed.quantization.similarity``: dequantised int8, Hamming for
bits, where the +-1 vectors give ``cos = 1 - 2 * hamming / D``). The STS and
retrieval scorers then run unchanged.

int8/uint8 ranges are calibrated on the wrapper's first ``encode`` call and
reused for later ones, as a deployed index would: ``evaluate_sizes`` makes one
wrapper per task and size, so an STS task calibrates on its own sentences and a
retrieval task on its queries (the first thing the retrieval scorer encodes).

Each text is embedded once (``MemoEncoder``); every size after that costs only
the scoring. Without Matryoshka training the table shows what plain truncation
costs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmembed.data.sts import load_sts, resolve_tasks
from lmembed.evaluation.sts import score_task
from lmembed.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from lmembed.model.spec import Role
from lmembed.options import option
from lmembed.quantization import (
    CALIBRATED,
    PRECISIONS,
    bytes_per_vector,
    check_dims_option,
    check_precision,
    dequantize,
    shrink,
    unit_rows,
)


@dataclass
class SizeOptions:
    """``lmembed eval --dims 640,256 --precision float32,int8,binary``: quality per size."""

    dims: list[int] = option([], "embedding sizes to score (first D coordinates); default: full")
    precision: list[str] = option(["float32"], f"precisions to score: {', '.join(PRECISIONS)}")

    def __post_init__(self) -> None:
        for precision in self.precision:
            check_precision(precision)
        for dims in self.dims:
            check_dims_option(dims)


class MemoEncoder:
    """Embeds each (role, text) once; later calls read the stored vectors."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.spec = encoder.spec
        self.dimension = encoder.dimension
        self._seen: dict[tuple[Role | None, str], np.ndarray] = {}

    def encode(self, texts: list[str], role: Role | None = None, **options: Any) -> np.ndarray:
        """``Embedder.encode``; ``options`` (batch size, progress) pass through."""
        missing = list(dict.fromkeys(t for t in texts if (role, t) not in self._seen))
        if missing:
            vectors = self.encoder.encode(missing, role=role, **options)
            self._seen.update({(role, t): v for t, v in zip(missing, vectors, strict=True)})
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._seen[(role, t)] for t in texts])


class SizedEncoder:
    """``encoder`` at ``dims`` x ``precision``: unit vectors that rank as the quantised ones."""

    def __init__(self, encoder: Any, dims: int | None, precision: str) -> None:
        check_precision(precision)
        self.encoder = encoder
        self.dims = dims or encoder.dimension
        self.precision = precision
        self.ranges: np.ndarray | None = None
        self.spec = _SizedSpec(encoder.spec.to_dict(), self.dims, precision)

    @property
    def dimension(self) -> int:
        return self.dims

    def encode(self, texts: list[str], role: Role | None = None, **options: Any) -> np.ndarray:
        """``Embedder.encode``, sized; ``options`` (batch size, progress) pass through."""
        vectors = self.encoder.encode(texts, role=role, **options)
        if len(vectors) == 0:
            return np.zeros((0, self.dims), dtype=np.float32)
        if self.precision in CALIBRATED and self.ranges is None and len(vectors) < 2:
            raise ValueError("int8 calibration needs at least 2 texts in the first encode call")
        codes, ranges = shrink(vectors, self.dims, self.precision, True, self.ranges)
        self.ranges = ranges if self.ranges is None else self.ranges
        restored = dequantize(codes, self.precision, self.ranges, self.dims)
        return unit_rows(restored)


@dataclass(frozen=True)
class _SizedSpec:
    base: dict[str, Any]
    dims: int
    precision: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.base, "dims": self.dims, "precision": self.precision}


RETRIEVAL_SCORE = " ndcg@10"


@dataclass
class SizeRow:
    """Scores of one dims x precision: STS Spearman and retrieval NDCG@10 per task (x100)."""

    dims: int
    precision: str
    bytes: int
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def average(self) -> float:
        """Mean over the STS tasks: retrieval NDCG@10 sits beside it, not mixed into it (a
        table of retrieval tasks alone averages those)."""
        sts = [v for k, v in self.scores.items() if not k.endswith(RETRIEVAL_SCORE)]
        return float(np.mean(sts or list(self.scores.values())))


@dataclass
class SizeTable:
    spec: dict[str, Any]
    rows: list[SizeRow]

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec,
                "rows": [{**asdict(r), "average": r.average} for r in self.rows]}  # fmt: skip

    def to_markdown(self) -> str:
        tasks = list(self.rows[0].scores)
        head = ["dims", "precision", "bytes/vector", *tasks, "**average**"]
        lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
        for row in self.rows:
            cells = [str(row.dims), row.precision, str(row.bytes)]
            cells += [f"{row.scores[t]:.2f}" for t in tasks] + [f"**{row.average:.2f}**"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self) -> bytes:
        """PNG: average score against bytes per vector, one line per precision."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for precision in dict.fromkeys(r.precision for r in self.rows):
            rows = sorted((r for r in self.rows if r.precision == precision), key=lambda r: r.bytes)
            ax.plot([r.bytes for r in rows], [r.average for r in rows], marker="o", label=precision)
            for r in rows:
                ax.annotate(str(r.dims), (r.bytes, r.average), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes per vector (labels: dims)")
        ax.set_ylabel("average score x100")
        ax.set_title(f"quality against size: {self.spec.get('model')}")
        ax.grid(alpha=0.3)
        ax.legend(title="precision")
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=120)
        plt.close(fig)
        return buffer.getvalue()

    def save(self, folder: str | Path) -> tuple[Path, Path, Path]:
        """``sizes.json``, ``sizes.md`` and ``sizes.png`` in ``folder``."""
        folder = Path(folder)
        paths = folder / "sizes.json", folder / "sizes.md", folder / "sizes.png"
        atomic_write_json(paths[0], self.to_dict())
        image = f"\n![quality against size]({paths[2].name})\n"
        atomic_write_text(paths[1], self.to_markdown() + image)
        atomic_write_bytes(paths[2], self.plot())
        return paths


def evaluate_sizes(
    embedder: Any,
    dims: Sequence[int] | None,
    precisions: Sequence[str],
    tasks: str | Sequence[str] = "quick",
    data_dir: str | Path | None = None,
    retrieval: Sequence[str] = (),
    batch_size: int = 32,
) -> SizeTable:
    """Score every STS task (and ``retrieval`` task, NDCG@10) at each dims x precision."""
    full = embedder.dimension
    dims = sorted(set(dims or [full]), reverse=True)
    if dims[0] > full:
        raise ValueError(f"dims {dims[0]} exceed the embedding size {full}")
    memo = MemoEncoder(embedder)
    rows = [SizeRow(d, p, bytes_per_vector(d, p)) for d in dims for p in precisions]
    for name in resolve_tasks(tasks):
        task = load_sts(name, data_dir)
        for row in rows:
            sized = SizedEncoder(memo, row.dims, row.precision)
            row.scores[name] = score_task(sized, task, batch_size, show_progress=False).spearman
    for name in retrieval:
        from lmembed.data.retrieval import load_retrieval
        from lmembed.evaluation.retrieval import score_retrieval_task

        task = load_retrieval(name, data_dir)
        for row in rows:
            sized = SizedEncoder(memo, row.dims, row.precision)
            scored = score_retrieval_task(sized, task, batch_size, cache=False, progress=False)
            row.scores[name + RETRIEVAL_SCORE] = scored.metrics["ndcg@10"]
    return SizeTable(embedder.spec.to_dict(), rows)
