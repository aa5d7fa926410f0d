"""Where a run's numbers go besides its own files: TensorBoard and MLflow (``--report-to``).

The run folder's ``log.jsonl`` and ``eval.jsonl`` are always written (``jsonl``): resume
and the run report read them. ``tensorboard`` writes event files under ``<run>/tensorboard``;
``mlflow`` logs to ``--mlflow-uri`` (default: a SQLite store under ``<run>/mlruns``, MLflow's
own recommended local store). Only rank 0 creates trackers. Scalars are named
``train/loss``, ``train/lr``, ``train/temperature``, ``train/grad_norm``,
``train/triplets_per_s`` and ``eval/<metric>`` (``lmembed.training.evaluator``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from lmembed.io import atomic_write_json

TRACKERS = ("jsonl", "tensorboard", "mlflow")
INSTALL = "pip install 'lmembed[track]'"
EXPERIMENT = "lmembed"
ADAPTER_EXTRAS = ("lmembed.json", "README.md")
FLUSH_SECONDS = 5


class MissingExtraError(ValueError):
    """A tracker's package is not installed."""


class Tracker(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None: ...

    def finish(self, adapter: Path) -> None: ...


def check_trackers(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"--report-to: unknown {', '.join(unknown)}; choose from {TRACKERS}")


def build_trackers(
    names: Sequence[str],
    run: Path,
    params: dict[str, Any],
    start: int,
    mlflow_uri: str | None = None,
    eval_metrics: Sequence[str] = (),
) -> list[Tracker]:
    """The trackers ``names`` asks for (``jsonl`` is the run's own files: none here).

    ``start`` > 0 is a resumed run: TensorBoard drops its events from that step on, so
    replayed steps are not shown twice, and MLflow continues the same run.
    """
    check_trackers(names)
    trackers: list[Tracker] = []
    if "tensorboard" in names:
        trackers.append(TensorBoard(run / "tensorboard", params, start, eval_metrics))
    if "mlflow" in names:
        trackers.append(MLflow(run, params, start, mlflow_uri))
    return trackers


def flat_params(params: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """Config values as scalars both trackers accept (lists as comma lists)."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        flat[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return flat


def _require(module: str, tracker: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"--report-to {tracker} needs the {tracker} package, which is not installed: {INSTALL}"
        ) from None


class TensorBoard:
    """Event files for ``tensorboard --logdir runs/``, with the flat config as hparams."""

    def __init__(
        self, folder: Path, params: dict[str, Any], start: int, eval_metrics: Sequence[str]
    ) -> None:
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # Written every few seconds in the background, not at every step.
        self.writer = SummaryWriter(
            str(folder), purge_step=start if start > 0 else None, flush_secs=FLUSH_SECONDS
        )
        if start == 0:
            tags = {f"eval/{name}": 0.0 for name in eval_metrics}
            for summary in hparams(flat_params(params), tags):
                self.writer.file_writer.add_summary(summary)

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def finish(self, adapter: Path) -> None:
        self.writer.close()


class MLflow:
    """Params, metrics and the final adapter (an artifact) in one MLflow run.

    The run id is kept in ``<run>/mlflow_run.json`` so a resumed run continues it.
    """

    def __init__(self, run: Path, params: dict[str, Any], start: int, uri: str | None) -> None:
        _require("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        store = run.resolve() / "mlruns"
        if uri is None:
            store.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{store / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        self.record = run / "mlflow_run.json"
        saved = json.loads(self.record.read_text()) if start > 0 and self.record.is_file() else {}
        if saved.get("tracking_uri") == uri:
            self.run_id = saved["run_id"]
            return
        found = self.client.get_experiment_by_name(EXPERIMENT)
        experiment = (
            found.experiment_id
            if found is not None
            else self.client.create_experiment(EXPERIMENT, artifact_location=store.as_uri())
        )
        self.run_id = self.client.create_run(experiment, run_name=run.name).info.run_id
        atomic_write_json(self.record, {"tracking_uri": uri, "run_id": self.run_id})
        values = [Param(k, str(v)) for k, v in flat_params(params).items()]
        for first in range(0, len(values), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=values[first : first + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_name(k), float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, adapter: Path) -> None:
        for path in sorted(adapter.iterdir()):
            if path.name.startswith("adapter_") or path.name in ADAPTER_EXTRAS:
                self.client.log_artifact(self.run_id, str(path), artifact_path="adapter")
        self.client.set_terminated(self.run_id)


def mlflow_name(name: str) -> str:
    """MLflow allows letters, digits, ``_ - . / :`` and spaces: ``ndcg@10`` -> ``ndcg_at_10``."""
    return re.sub(r"[^\w\-./: ]", "_", name.replace("@", "_at_"))
