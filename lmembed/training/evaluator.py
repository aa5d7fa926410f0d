"""Evaluation during training: dev scores at chosen steps, the best step, early stopping.

Tasks use ``lmembed eval --tasks`` syntax (STS names such as ``stsb-dev``, an STS file,
retrieval names or BEIR folders). Metric names, shared by the log, the trackers and
``--keep-best``: a task's main score under the task's name (Spearman x100 for STS,
NDCG@10 x100 for retrieval), its other metrics as ``task/metric`` (``stsb-dev/pearson``,
``stsb-paraphrase/mrr@10``); a custom file or folder is named by its path as given.
Every metric is higher-is-better.

An evaluation leaves training exactly as it found it: it runs in eval mode without
gradients and restores every RNG state, so a run's adapter is bit-identical with or
without evaluations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmembed.data.retrieval import load_retrieval, split_tasks
from lmembed.data.sts import load_sts
from lmembed.evaluation.retrieval import score_retrieval_task
from lmembed.evaluation.sts import score_task
from lmembed.model.embedder import Embedder
from lmembed.options import option
from lmembed.retrieval.metrics import METRICS as RETRIEVAL_METRICS
from lmembed.training.checkpoint import rng_states, set_rng_states

DEFAULT_TASK = "stsb-dev"
STS_MAIN, RETRIEVAL_MAIN = "spearman", "ndcg@10"
# A task's metrics other than its main one, logged as "task/metric".
SUB_METRICS = ("pearson", *(m for m in RETRIEVAL_METRICS if m != RETRIEVAL_MAIN))
Scorer = Callable[[Embedder], dict[str, float]]


@dataclass
class EvalDuringTraining:
    """When and on what ``lmembed train`` scores the model while it trains."""

    eval_tasks: str | None = option(
        None,
        "tasks to score during training, as `lmembed eval --tasks` takes them (STS names, "
        "stsb-dev, an STS file, retrieval names, BEIR folders); default: stsb-dev. Given "
        "alone, the run is scored once at the end (docs/training.md)",
    )
    eval_every: int = option(0, "score the eval tasks every N steps and at the end (0: off)")
    eval_at_start: bool = option(False, "also score the model before the first step")
    eval_batch_size: int = option(32, "texts per forward pass while evaluating")
    eval_data_dir: str | None = option(
        None, "data folder for named eval tasks; unset: $LMEMBED_DATA_DIR"
    )
    keep_best: str | None = option(
        None,
        "TASK[/METRIC]: the output folder keeps the adapter of the evaluated step that "
        "scored highest on it (e.g. stsb-dev, stsb-paraphrase/ndcg@10); the final step's "
        "goes to OUTPUT/last",
    )
    early_stopping_patience: int | None = option(
        None, "stop after this many evaluations in a row without a new best (needs --keep-best)"
    )

    def __post_init__(self) -> None:
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be 0 (off) or positive, got {self.eval_every}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be positive, got {self.eval_batch_size}")
        if self.keep_best is not None and self.eval_every == 0:
            raise ValueError("--keep-best needs evaluations to choose from: give --eval-every N")
        if self.early_stopping_patience is not None:
            if self.keep_best is None:
                raise ValueError(
                    "--early-stopping-patience needs the metric it watches: --keep-best"
                )
            if self.early_stopping_patience < 1:
                raise ValueError(
                    f"early_stopping_patience must be at least 1, got "
                    f"{self.early_stopping_patience}"
                )

    @property
    def enabled(self) -> bool:
        return self.eval_every > 0 or self.eval_at_start or self.eval_tasks is not None

    def due(self, step: int, last_step: int) -> bool:
        """Whether the model is scored after ``step`` (0: before training)."""
        if not self.enabled:
            return False
        if step == 0:
            return self.eval_at_start
        return step == last_step or (self.eval_every > 0 and step % self.eval_every == 0)


class DevEvaluator:
    """Scores an embedder on the eval tasks, loaded once (bad data fails before step 1)."""

    def __init__(self, tasks: str, data_dir: str | Path | None, batch_size: int = 32) -> None:
        selection = split_tasks(tasks)
        self.sts = {name: load_sts(name, data_dir) for name in selection.sts}
        self.retrieval = {name: load_retrieval(name, data_dir) for name in selection.retrieval}
        self.batch_size = batch_size

    @classmethod
    def from_options(cls, options: EvalDuringTraining) -> DevEvaluator:
        """The tasks given, or stsb-dev (an error naming the flags when it is missing)."""
        if options.eval_tasks is not None:
            return cls(options.eval_tasks, options.eval_data_dir, options.eval_batch_size)
        try:
            return cls(DEFAULT_TASK, options.eval_data_dir, options.eval_batch_size)
        except ValueError as error:
            raise ValueError(
                f"evaluation during training scores {DEFAULT_TASK} by default, which was not "
                f"found ({error}); give --eval-tasks, or --eval-data-dir DIR"
            ) from None

    @property
    def metric_names(self) -> list[str]:
        names = [m for task in self.sts for m in (task, f"{task}/pearson")]
        for task in self.retrieval:
            names += [task] + [f"{task}/{m}" for m in RETRIEVAL_METRICS if m != RETRIEVAL_MAIN]
        return names

    def __call__(self, embedder: Embedder) -> dict[str, float]:
        states = rng_states()
        try:
            return self._score(embedder)
        finally:
            set_rng_states(states)

    def _score(self, embedder: Embedder) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, task in self.sts.items():
            score = score_task(embedder, task, self.batch_size, show_progress=False)
            metrics[name], metrics[f"{name}/pearson"] = score.spearman, score.pearson
        for name, task in self.retrieval.items():
            # No corpus cache: the weights change between evaluations, the spec does not.
            found = score_retrieval_task(
                embedder, task, self.batch_size, cache=False, progress=False
            )
            for metric, value in found.metrics.items():
                metrics[name if metric == RETRIEVAL_MAIN else f"{name}/{metric}"] = value
        return metrics


def split_metric(name: str, names: Collection[str]) -> tuple[str, str | None]:
    """``"task/metric"`` -> (task, metric); a task's main metric (its bare name) ->
    (task, None). Tasks named by a file path hold "/" themselves, hence the known ``names``."""
    task, _, metric = name.rpartition("/")
    return (task, metric) if metric in SUB_METRICS and task in names else (name, None)


def metric_key(name: str, available: Iterable[str]) -> str:
    """``--keep-best`` as a metric name: ``task``, ``task/metric``, the main one bare."""
    available = list(available)
    task, _, metric = name.rpartition("/")
    if task and task in available and metric in (STS_MAIN, RETRIEVAL_MAIN):
        name = task
    if name not in available:
        raise ValueError(f"--keep-best {name!r} is not an eval metric; choose from {available}")
    return name


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the step it followed (0: before training), its scores and seconds."""

    step: int
    metrics: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "metrics": self.metrics, "seconds": self.seconds}


class BestTracker:
    """The best evaluated step on one metric and the evaluations since it (early stopping).

    Rebuilt on resume from the run's evaluation log, so a resumed run decides as an
    uninterrupted one would. A tie is not a new best: the earlier step is kept.
    """

    def __init__(self, metric: str | None, patience: int | None) -> None:
        self.metric, self.patience = metric, patience
        self.best: Evaluation | None = None
        self.since_best = 0

    def add(self, evaluation: Evaluation) -> bool:
        """Record an evaluation; whether it is a new best."""
        if self.metric is None:
            return False
        score = evaluation.metrics[self.metric]
        if self.best is None or score > self.best.metrics[self.metric]:
            self.best, self.since_best = evaluation, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def summary(self) -> dict[str, Any] | None:
        """``best.json``: which step won and its score."""
        if self.best is None:
            return None
        return {
            "metric": self.metric,
            "step": self.best.step,
            "score": self.best.metrics[self.metric],
        }


def timed(scorer: Scorer, embedder: Embedder, step: int) -> Evaluation:
    began = time.perf_counter()
    metrics = scorer(embedder)
    return Evaluation(step, metrics, round(time.perf_counter() - began, 3))
