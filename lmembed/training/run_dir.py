"""A training run's folder: where each file lives, and how to read it back.

``lmembed train --output DIR`` writes:

* the adapter (``adapter_model.safetensors``, ``adapter_config.json``, ``lmembed.json``);
  with ``--ema-decay`` it holds the averaged weights and ``last-step/`` the last step's;
  with ``--keep-best`` it holds the best evaluated step's and ``last/`` the final step's;
* ``README.md``: the model card (``lmembed.model_card``);
* ``train_config.json``: every option, flat (``TrainConfig.to_dict()``);
* ``data.json``: the training data's summary (sources, rows, layout);
* ``log.jsonl``: one record per step (loss, lr, grad norm, examples/s);
* ``eval.jsonl``: one record per evaluation (step, metrics, seconds); ``best.json``: the
  step ``--keep-best`` kept and its score;
* ``report.md``/``report.png``: loss and eval metrics against step;
* ``teacher.json``: with ``--teacher``, what the teacher's vectors cost (texts, seconds);
* ``tensorboard/``, ``mlruns/``: the ``--report-to`` trackers' files;
* ``checkpoint/``: what ``--resume`` needs (``checkpoint.TrainingState``).

Experiments, reports and benchmarks read runs through this module only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lmembed.io import atomic_write_text
from lmembed.training.checkpoint import has_checkpoint

logger = logging.getLogger("lmembed")


class RunDir:
    """Paths inside one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def last_step(self) -> Path:
        """The last step's adapter when the run saves averaged weights (``--ema-decay``)."""
        return self.path / "last-step"

    @property
    def last(self) -> Path:
        """The final step's adapter when the folder keeps the best one (``--keep-best``)."""
        return self.path / "last"

    @property
    def log(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def eval_log(self) -> Path:
        return self.path / "eval.jsonl"

    @property
    def best_file(self) -> Path:
        return self.path / "best.json"

    @property
    def data_summary(self) -> Path:
        return self.path / "data.json"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_png(self) -> Path:
        return self.path / "report.png"

    @property
    def config(self) -> Path:
        return self.path / "train_config.json"

    def has_checkpoint(self) -> bool:
        return has_checkpoint(self.checkpoint)

    def check_fresh_resume(self, first_checkpoint: int) -> None:
        """``--resume`` found no checkpoint: start at step 0 only if none was due yet.

        The log's step ``first_checkpoint + 1`` is written only after the first
        checkpoint is complete, so a log past it means the checkpoint is gone:
        an error, never a silent restart. A new folder, or a run killed before its
        first checkpoint, starts at step 0 and says so.
        """
        logged = max((r["step"] for r in self.metrics()), default=0)
        if logged > first_checkpoint:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {self.checkpoint}, yet {self.log} records step "
                f"{logged}, past the first checkpoint (step {first_checkpoint}); it was deleted "
                f"or moved. Restore it, or train from step 0 without --resume"
            )
        logger.warning(
            "--resume: no checkpoint in %s (none was due yet); starting at step 0", self.path
        )

    def write_config(self, options: dict[str, Any]) -> None:
        atomic_write_text(self.config, json.dumps(options, indent=2) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.log)

    def evaluations(self) -> list[dict[str, Any]]:
        """The ``eval.jsonl`` records: ``{"step", "metrics": {name: score}, "seconds"}``."""
        return read_metrics(self.eval_log)

    def best(self) -> dict[str, Any] | None:
        """``best.json`` (``{"metric", "step", "score"}``), or None without ``--keep-best``."""
        if not self.best_file.is_file():
            return None
        return json.loads(self.best_file.read_text(encoding="utf-8"))


class MetricsLog:
    """Append-only JSONL of per-step metrics; on resume, later lines are dropped."""

    def __init__(self, path: Path, keep_until_step: int) -> None:
        self.path = path
        if path.exists():
            kept = [r for r in read_metrics(path) if r["step"] <= keep_until_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a ``log.jsonl`` (empty when training has not started)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line]
