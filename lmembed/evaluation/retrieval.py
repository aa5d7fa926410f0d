"""Retrieval evaluation: NDCG@10, MRR@10, MAP@100, Recall@10/100, Accuracy@1 (x100).

Queries are embedded with the query prompt, documents with the document prompt; the
corpus is encoded in chunks (cached on disk, see ``lmembed.retrieval.store``) and
searched exactly by cosine with a running top-100 per query, so memory is bounded by
one chunk. Metrics are trec_eval's (``lmembed.retrieval.metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmembed.data.retrieval import RetrievalTask, load_retrieval
from lmembed.evaluation.result import Result
from lmembed.evaluation.sts import _version
from lmembed.retrieval.metrics import METRICS, evaluate_run, mean_metrics
from lmembed.retrieval.search import TopK
from lmembed.retrieval.store import DEFAULT_CHUNK, RoleEncoder, default_folder, encoded_chunks

TOP_K = 100
LABELS = {
    "ndcg@10": "NDCG@10",
    "mrr@10": "MRR@10",
    "map@100": "MAP@100",
    "recall@10": "R@10",
    "recall@100": "R@100",
    "accuracy@1": "Acc@1",
}


@dataclass(frozen=True)
class TaskRetrieval:
    """One task's metrics (x100, keys ``METRICS``) and its size."""

    metrics: dict[str, float]
    queries: int
    documents: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.metrics, "queries": self.queries, "documents": self.documents}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRetrieval:
        return cls(
            {m: float(data[m]) for m in METRICS}, int(data["queries"]), int(data["documents"])
        )


@dataclass
class RetrievalResult(Result):
    """Scores of one embedding spec on retrieval tasks; JSON via ``to_dict``/``from_dict``,
    with ``"base"`` (the same shape) when compared with the base model."""

    spec: dict[str, Any]
    tasks: dict[str, TaskRetrieval] = field(default_factory=dict)
    lmembed_version: str = "unknown"
    elapsed_s: float = 0.0
    base: RetrievalResult | None = None

    KIND = "retrieval"

    @property
    def average(self) -> dict[str, float]:
        """Each metric's mean over tasks."""
        return {m: float(np.mean([t.metrics[m] for t in self.tasks.values()])) for m in METRICS}

    def task_dicts(self) -> dict[str, dict[str, Any]]:
        return {name: task.to_dict() for name, task in self.tasks.items()}

    def averages(self) -> dict[str, float]:
        return self.average

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalResult:
        if not isinstance(data, dict) or not {"tasks", "average"} <= data.keys():
            raise ValueError("not an lmembed retrieval result (needs 'tasks' and 'average')")
        meta = {"tasks", "average", "lmembed_version", "elapsed_s", "base"}
        return cls(
            spec={k: v for k, v in data.items() if k not in meta},
            tasks={n: TaskRetrieval.from_dict(t) for n, t in data["tasks"].items()},
            lmembed_version=data.get("lmembed_version", "unknown"),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            base=cls.from_dict(data["base"]) if data.get("base") else None,
        )

    def to_markdown(self) -> str:
        """One table: a row per task and the average, a column per metric."""
        header = " | ".join(LABELS[m] for m in METRICS)
        lines = [
            f"**{_label(self.spec)}**",
            "",
            f"| task | {header} | queries | documents |",
            "|---|" + "---:|" * (len(METRICS) + 2),
        ]
        for name, task in self.tasks.items():
            cells = " | ".join(f"{task.metrics[m]:.2f}" for m in METRICS)
            lines.append(f"| {name} | {cells} | {task.queries} | {task.documents} |")
        if self.tasks:
            cells = " | ".join(f"{self.average[m]:.2f}" for m in METRICS)
            lines.append(f"| **average** | {cells} | | |")
        return "\n".join(lines) + "\n"

    def compare(self, base: RetrievalResult, metrics: Sequence[str] = METRICS) -> str:
        """Markdown before (``base``) and after (this result): a row per task and metric
        with the change."""
        lines = [
            f"base: {_label(base.spec)}  ",
            f"tuned: {_label(self.spec)}",
            "",
            "| task | metric (x100) | base | tuned | Δ |",
            "|---|---|---:|---:|---:|",
        ]
        for name in dict.fromkeys([*base.tasks, *self.tasks]):
            for metric in metrics:
                before = base.tasks[name].metrics[metric] if name in base.tasks else None
                after = self.tasks[name].metrics[metric] if name in self.tasks else None
                delta = "–" if before is None or after is None else f"{after - before:+.2f}"
                lines.append(
                    f"| {name} | {LABELS[metric]} | {_num(before)} | {_num(after)} | {delta} |"
                )
        return "\n".join(lines) + "\n"


def score_retrieval_task(
    encoder: RoleEncoder,
    task: RetrievalTask,
    batch_size: int = 32,
    cache: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> TaskRetrieval:
    """Embed, search the top 100 per query, and compute the metrics of one task."""
    queries = encoder.encode(
        task.queries, batch_size=batch_size, show_progress=progress, role="query"
    )
    folder = default_folder(encoder, task.documents, chunk_size) if cache else None
    top = TopK(np.asarray(queries, dtype=np.float32), TOP_K)
    for chunk in encoded_chunks(encoder, task.documents, folder, chunk_size, batch_size, progress):
        top.add(chunk)
    run = {
        query: {task.doc_ids[i]: float(s) for i, s in zip(indices, scores, strict=True)}
        for query, indices, scores in zip(task.query_ids, top.indices, top.scores, strict=True)
    }
    metrics = mean_metrics(evaluate_run(task.qrels, run))
    return TaskRetrieval(metrics, len(task.queries), len(task.documents))


def evaluate_retrieval(
    encoder: RoleEncoder,
    tasks_or_dirs: str | Path | Sequence[str | Path],
    data_dir: str | Path | None = None,
    batch_size: int = 32,
    cache: bool | None = None,
    split: str = "test",
    progress: bool = True,
) -> RetrievalResult:
    """Score ``encoder`` on named tasks (``stsb-paraphrase``) and/or BEIR folders.

    ``cache`` (default on) keeps encoded corpora under ``cache_root()/corpus``, keyed by
    the embedding spec, the model/adapter files and the documents, so a second run over
    the same corpus only encodes the queries.
    """
    started = time.perf_counter()
    if isinstance(tasks_or_dirs, (str, Path)):
        tasks_or_dirs = [tasks_or_dirs]
    result = RetrievalResult(spec=encoder.spec.to_dict(), lmembed_version=_version())
    for entry in tasks_or_dirs:
        task = load_retrieval(entry, data_dir, split)
        name = task.name if task.name not in result.tasks else str(task.path)
        result.tasks[name] = score_retrieval_task(
            encoder, task, batch_size, cache is not False, progress=progress
        )
    result.elapsed_s = round(time.perf_counter() - started, 3)
    return result


def _label(spec: dict[str, Any]) -> str:
    parts = [str(spec.get("model"))]
    if spec.get("adapter"):
        parts.append(f"+ adapter {spec['adapter']}")
    return " ".join(parts)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
