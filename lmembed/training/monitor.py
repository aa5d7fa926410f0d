"""What a run shows and keeps while it trains: logs, trackers, evaluations, the best step.

Rank 0 does all of it; under ``torchrun`` the other ranks wait at each evaluation and
learn from rank 0 whether early stopping ended the run. On resume the logs are cut
back to the checkpoint's step and the best step is rebuilt from ``eval.jsonl``, so the
replayed steps decide exactly as an uninterrupted run did.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from lmembed.faults import fault_point
from lmembed.io import atomic_write_json
from lmembed.model.embedder import Embedder
from lmembed.training.averaging import ExponentialAverage
from lmembed.training.config import TrainConfig
from lmembed.training.distributed import Distributed, broadcast_flag
from lmembed.training.evaluator import (
    BestTracker,
    DevEvaluator,
    Evaluation,
    Scorer,
    metric_key,
    timed,
)
from lmembed.training.run_dir import MetricsLog, RunDir
from lmembed.training.trackers import Tracker, build_trackers

logger = logging.getLogger("lmembed")


class RunMonitor:
    """Logs each step, scores the model when due, keeps the best adapter, stops early."""

    def __init__(
        self,
        config: TrainConfig,
        run: RunDir,
        job: Distributed,
        start: int,
        scorer: Scorer | None = None,
    ) -> None:
        self.options = config.evaluation
        self.run, self.job = run, job
        self.eval_seconds = 0.0  # this process's evaluations (training time excludes them)
        self.last_scores: dict[str, float] = {}
        self.scorer: Scorer | None = None
        self.log: MetricsLog | None = None
        self.eval_log: MetricsLog | None = None
        self.trackers: list[Tracker] = []
        metric, names = self.options.keep_best, []
        if job.is_main and self.options.enabled:
            if scorer is None:
                evaluator = DevEvaluator.from_options(self.options)
                names = evaluator.metric_names
                metric = metric and metric_key(metric, names)
                scorer = evaluator
            self.scorer = scorer
        self.best = BestTracker(metric, self.options.early_stopping_patience)
        if job.is_main:
            self.log = MetricsLog(run.log, keep_until_step=start)
            # The evaluation of a checkpoint's step ran before it was saved; at step 0
            # nothing was saved, so a start evaluation is redone.
            self.eval_log = MetricsLog(run.eval_log, keep_until_step=start if start else -1)
            for record in run.evaluations():
                self._record(Evaluation(record["step"], record["metrics"], record["seconds"]))
            self.trackers = build_trackers(
                config.report_to, run.path, config.to_dict(), start, config.mlflow_uri, names
            )
        self.stopped = broadcast_flag(self.best.should_stop, job)

    def log_step(self, record: dict[str, Any]) -> None:
        if self.log is None:
            return
        self.log.write(record)
        values = {f"train/{k}": v for k, v in record.items() if k != "step"}
        for tracker in self.trackers:
            tracker.log(record["step"], values)

    def due(self, step: int, last_step: int) -> bool:
        return self.options.due(step, last_step)

    def evaluate(self, step: int, embedder: Embedder, average: ExponentialAverage | None) -> bool:
        """Score the weights the run would save (the average, with one); keep a new best.
        Returns whether early stopping ends the run here (on every rank)."""
        if self.job.is_main:
            with average.applied() if average is not None else nullcontext():
                evaluation = timed(self.scorer, embedder, step)
                self.eval_seconds += evaluation.seconds
                fault_point("evaluate")
                self.eval_log.write(evaluation.to_dict())
                values = {f"eval/{k}": v for k, v in evaluation.metrics.items()}
                for tracker in self.trackers:
                    tracker.log(step, values)
                if self._record(evaluation):
                    embedder.save_adapter(self.run.path)
                    fault_point("best_save")
                    atomic_write_json(self.run.best_file, self.best.summary())
            logger.info("step %d: %s (%.1f s)", step, self.describe(), evaluation.seconds)
        self.stopped = broadcast_flag(self.best.should_stop, self.job)
        if self.stopped and self.job.is_main:
            logger.info(
                "early stopping at step %d: %d evaluations without a better %s than step %d's",
                step, self.best.since_best, self.best.metric, self.best.best.step,
            )  # fmt: skip
        return self.stopped

    def _record(self, evaluation: Evaluation) -> bool:
        self.last_scores = evaluation.metrics
        return self.best.add(evaluation)

    def describe(self, width: int = 3) -> str:
        """The last evaluation's first metrics, for the log line."""
        shown = list(self.last_scores.items())[:width]
        return ", ".join(f"{name} {value:.2f}" for name, value in shown)

    def postfix_score(self) -> dict[str, str]:
        """The watched (or first) metric's last score, for the progress bar (a long name,
        such as a file's path, shows as ``eval``; the log line names it)."""
        if not self.last_scores:
            return {}
        name = self.best.metric or next(iter(self.last_scores))
        return {name if len(name) <= 24 else "eval": f"{self.last_scores[name]:.2f}"}

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish(self.run.path)
