"""Ablation sweeps: train and score every run of a sweep, resumably.

The sweep is resumable: a run is finished when its ``result.json`` exists, a
half-trained run continues from its checkpoint, and a run that fails is recorded
(with its error) while the sweep moves on. ``results.csv``, ``report.md`` and the
plots (``ablation_report``) are rewritten after every run.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmembed.data.training import TrainingData, load_training_data
from lmembed.evaluation import evaluate
from lmembed.experiments.ablation_report import write_outputs
from lmembed.experiments.sweep import Sweep, load_sweep, read_record
from lmembed.io import atomic_write_json
from lmembed.model.embedder import Embedder
from lmembed.model.spec import EmbeddingSpec
from lmembed.system import accelerator
from lmembed.training.config import TrainConfig
from lmembed.training.run_dir import read_metrics
from lmembed.training.trainer import train

logger = logging.getLogger("lmembed")

LOCK_ENV = "LMEMBED_CPU_LOCK"


def run_ablation(
    config: str | Path | dict[str, Any],
    output: str | Path,
    model: str | None = None,
    tasks: str | list[str] | None = None,
    data_dir: str | Path | None = None,
    retry_failed: bool = False,
    command: str | None = None,
) -> Path:
    """Run (or resume) a sweep into ``output``; returns the path of ``report.md``.

    Set ``$LMEMBED_CPU_LOCK`` to a lock file to hold it (``flock``) only while a
    run trains and scores, so other heavy jobs can go between runs.
    """
    sweep = load_sweep(config, output, model, tasks, data_dir)
    shown = "<dict>" if isinstance(config, dict) else repr(str(config))
    command = command or f"run_ablation({shown}, {str(output)!r})"
    folders = list(sweep.configs)
    logger.info(
        "ablate: %d settings in %d studies -> %d training runs; tasks %s",
        len(sweep.settings),
        len({s.study for s in sweep.settings}),
        len(folders),
        sweep.tasks,
    )
    datasets: dict[str, TrainingData] = {}
    for embedding in sweep.embeddings():
        path = sweep.base_record_path(embedding)
        if _pending(path, retry_failed):
            with _cpu_lock():
                atomic_write_json(path, _score_base(sweep, embedding))
            write_outputs(sweep, command)
    for number, folder in enumerate(folders, 1):
        path = sweep.run_record_path(folder)
        if not _pending(path, retry_failed):
            logger.info(
                "ablate: [%d/%d] %s finished already, skipped", number, len(folders), folder
            )
            continue
        logger.info("ablate: [%d/%d] %s", number, len(folders), folder)
        with _cpu_lock():
            record = _train_and_score(sweep, sweep.configs[folder], datasets)
        atomic_write_json(path, record)
        write_outputs(sweep, command)
    return write_outputs(sweep, command, plots=True)


def _pending(path: Path, retry_failed: bool) -> bool:
    record = read_record(path)
    return record is None or (retry_failed and record["status"] == "failed")


@contextmanager
def _cpu_lock() -> Iterator[None]:
    """Hold ``$LMEMBED_CPU_LOCK`` (if set) for one run: heavy jobs take turns on the CPUs."""
    path = os.environ.get(LOCK_ENV)
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("ablate: waiting for the CPU lock %s", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_and_score(
    sweep: Sweep, config: TrainConfig, cache: dict[str, TrainingData]
) -> dict[str, Any]:
    """Train (or finish training) one run and score it; any exception becomes a failed record."""
    began = time.perf_counter()
    folder = Path(config.output)
    record: dict[str, Any] = {"config": config.to_dict(), "status": "failed", "error": None}
    try:
        if not (folder / "adapter_model.safetensors").is_file():  # saved once training ends
            key = repr(config.dataset)  # runs that read the same data index it once
            if key not in cache:
                cache[key] = load_training_data(config.dataset, texts=config.loss == "none")
            train(config, data=cache[key])
        gc.collect()
        embedder = Embedder.from_pretrained(adapter=folder, device=accelerator())
        result = evaluate(embedder, sweep.tasks, sweep.data_dir, sweep.eval_batch_size)
        record["eval"] = result.to_dict()
        record["status"] = "ok"
    except Exception as error:  # the sweep goes on; Ctrl-C still stops it
        logger.exception("ablate: run %s failed", folder.name)
        record["error"] = f"{type(error).__name__}: {error}"
    finally:
        gc.collect()
    record.update(_log_summary(folder / "log.jsonl", config.batch_size))
    record["wall_s"] = round(time.perf_counter() - began, 1)
    record["finished_at"] = _now()
    return record


def _score_base(sweep: Sweep, embedding: dict[str, Any]) -> dict[str, Any]:
    """The base model (no adapter) with one run's prompt and pooling; cached by ``evaluate``."""
    began = time.perf_counter()
    record: dict[str, Any] = {"embedding": embedding, "status": "failed", "error": None}
    try:
        embedder = Embedder.from_spec(EmbeddingSpec.from_dict(embedding), accelerator())
        result = evaluate(embedder, sweep.tasks, sweep.data_dir, sweep.eval_batch_size)
        record["eval"] = result.to_dict()
        record["status"] = "ok"
    except Exception as error:
        logger.exception("ablate: base model %s failed", embedding)
        record["error"] = f"{type(error).__name__}: {error}"
    finally:
        gc.collect()
    record["wall_s"] = round(time.perf_counter() - began, 1)
    record["finished_at"] = _now()
    return record


def _log_summary(path: Path, batch_size: int) -> dict[str, Any]:
    """Final loss and summed step time from ``log.jsonl`` (exact across resumes)."""
    steps = read_metrics(path)
    if not steps:
        return {"steps_done": 0, "final_loss": None, "train_s": None}
    return {
        "steps_done": steps[-1]["step"],
        "final_loss": steps[-1]["loss"],
        "train_s": round(sum(batch_size / s["triplets_per_s"] for s in steps), 3),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
