"""Ablation sweeps: vary training options one study at a time, train, score, report.

A sweep file (``ablations/*.yaml``) names a base training config, the model, the
STS tasks and named studies; each study is a ``grid`` (cartesian product) or a
list of ``runs`` over ``TrainConfig`` options, and every run is base + its
overrides. Runs with the same effective config train once, in ``DIR/runs/<name>``.

The sweep is resumable: a run is finished when its ``result.json`` exists, a
half-trained run continues from its checkpoint, and a run that fails is recorded
(with its error) while the sweep moves on. ``results.csv``, ``report.md`` and the
plots are rewritten after every run.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import time
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lmembed.data import ALL_TASKS, resolve_data_dir, resolve_tasks
from lmembed.data.hub import looks_like_hub_id
from lmembed.data.sts import load_sts
from lmembed.data.triplets import Triplets, load_triplets
from lmembed.evaluation import evaluate
from lmembed.experiments.demo import find_training_data
from lmembed.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from lmembed.model.embedder import Embedder
from lmembed.system import machine_summary
from lmembed.training.config import TrainConfig, config_from_dict
from lmembed.training.trainer import train

logger = logging.getLogger("lmembed")

LOCK_ENV = "LMEMBED_CPU_LOCK"
SWEEP_KEYS = (
    "model",
    "base_config",
    "base",
    "tasks",
    "data_dir",
    "eval_batch_size",
    "note",
    "studies",
    "grid",
    "runs",
)
STUDY_KEYS = ("grid", "runs")
# Set by the runner for every run; a sweep file may not choose them.
MANAGED = ("output", "resume")
# Options that define the embedding function of the base model (no adapter).
EMBEDDING = ("model", "prompt", "pooling", "max_length", "dtype", "trust_remote_code")
PAPER_STEPS, PAPER_BATCH = 1000, 32
DEFAULT_FOLDER = "default"
PLOTS = ("ablation-average.png", "ablation-tasks.png", "ablation-loss.png")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: ``5e-4`` is a number, not the string PyYAML 1.1 makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class Setting:
    """One row of a study: its name, what it changes, and the run folder it shares."""

    study: str
    name: str
    overrides: dict[str, Any]
    folder: str


@dataclass
class Sweep:
    """A validated sweep: every run's effective config is known before anything trains."""

    source: str
    output: Path
    base: TrainConfig
    tasks: list[str]
    data_dir: Path
    eval_batch_size: int
    note: str | None
    settings: list[Setting]
    configs: dict[str, TrainConfig] = field(default_factory=dict)  # folder -> config

    @property
    def varied(self) -> list[str]:
        """Options that some study changes, in the order they first appear."""
        keys = (key for s in self.settings for key in s.overrides)
        return list(dict.fromkeys(keys))

    def embeddings(self) -> list[dict[str, Any]]:
        """Distinct embedding functions (model, prompt, pooling, ...) over all runs."""
        found = {_embedding_key(self.configs[s.folder]): None for s in self.settings}
        return [json.loads(key) for key in found]


# --------------------------------------------------------------------------- parsing


def load_sweep(
    config: str | Path | dict[str, Any],
    output: str | Path,
    model: str | None = None,
    tasks: str | list[str] | None = None,
    data_dir: str | Path | None = None,
) -> Sweep:
    """Read and validate a sweep; raises ``ValueError`` naming the file, study and option."""
    raw = config if isinstance(config, dict) else _read_yaml(Path(config))
    source = "sweep" if isinstance(config, dict) else str(config)
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(unknown)}; a sweep file has "
            f"{', '.join(SWEEP_KEYS)} (training options go under 'base:')"
        )
    root = resolve_data_dir(data_dir or raw.get("data_dir"))
    base_values = _base_values(raw, source, model)
    if not base_values.get("data"):
        base_values["data"] = find_training_data(root)
    base = _build(base_values, {}, f"{source}, base")
    try:
        task_names = resolve_tasks(tasks or raw.get("tasks") or "all")
        eval_batch_size = int(raw.get("eval_batch_size", 32))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {error}") from None
    for name in task_names:  # fail now, not after the first hour of training
        load_sts(name, root)
    sweep = Sweep(
        source=source,
        output=Path(output),
        base=base,
        tasks=task_names,
        data_dir=root,
        eval_batch_size=eval_batch_size,
        note=raw.get("note"),
        settings=[],
    )
    _plan(sweep, base_values, _studies(raw, source))
    return sweep


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: file not found (relative paths are resolved from {Path.cwd()})"
        )
    loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return loaded


def _base_values(raw: dict[str, Any], source: str, model: str | None) -> dict[str, Any]:
    """``base_config`` file < inline ``base`` < top-level ``model`` < ``--model``."""
    values: dict[str, Any] = {}
    if raw.get("base_config"):
        values.update(_normalise(_read_yaml(Path(raw["base_config"]))))
    inline = raw.get("base") or {}
    if not isinstance(inline, dict):
        raise ValueError(f"{source}: 'base' must be a mapping of training options")
    values.update(_normalise(inline))
    for chosen in (raw.get("model"), model):
        if chosen:
            values["model"] = chosen
    return values


def _studies(raw: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """``studies: {name: {grid|runs}}``; top-level ``grid``/``runs`` form a study 'main'."""
    studies = dict(raw.get("studies") or {})
    top = {key: raw[key] for key in STUDY_KEYS if key in raw}
    if top:
        studies.setdefault("main", top)
    if not studies:
        raise ValueError(f"{source}: no runs; add 'studies:' (or 'grid:'/'runs:')")
    for name, spec in studies.items():
        where = f"{source}, study {name!r}"
        if not isinstance(spec, dict) or not set(spec) & set(STUDY_KEYS):
            raise ValueError(f"{where}: give 'grid: {{option: [values]}}' or 'runs: [...]'")
        extra = sorted(set(spec) - set(STUDY_KEYS))
        if extra:
            raise ValueError(f"{where}: unknown key(s) {', '.join(extra)}; use grid or runs")
    return studies


def _study_runs(spec: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) pairs: the grid's cartesian product, then the explicit runs."""
    runs: list[tuple[str, dict[str, Any]]] = []
    grid = _normalise(spec.get("grid") or {})
    if grid:
        axes = [v if isinstance(v, list) else [v] for v in grid.values()]
        if not all(axes):
            raise ValueError(f"{where}: every grid option needs at least one value")
        for combo in itertools.product(*axes):
            overrides = dict(zip(grid, combo, strict=True))
            runs.append((_auto_name(overrides), overrides))
    for index, run in enumerate(spec.get("runs") or []):
        if not isinstance(run, dict):
            raise ValueError(f"{where}: run {index + 1} must be a mapping of options")
        overrides = _normalise({k: v for k, v in run.items() if k != "name"})
        runs.append((str(run.get("name") or _auto_name(overrides)), overrides))
    names = [name for name, _ in runs]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{where}: two runs are named {duplicate!r}; give each a unique name")
    return runs


def _plan(sweep: Sweep, base_values: dict[str, Any], studies: dict[str, dict[str, Any]]) -> None:
    """Expand studies into settings; identical effective configs share one folder."""
    base_key = _config_key(sweep.base)
    folders: dict[str, str] = {base_key: DEFAULT_FOLDER}  # config key -> folder
    for study, spec in studies.items():
        for name, overrides in _study_runs(spec, f"{sweep.source}, study {study!r}"):
            config = _build(
                base_values, overrides, f"{sweep.source}, study {study!r}, run {name!r}"
            )
            key = _config_key(config)
            if key not in folders:
                folders[key] = _free_folder(sweep, study, name)
            folder = folders[key]
            sweep.configs[folder] = config.replace(
                output=str(sweep.output / "runs" / folder), resume=True
            )
            sweep.settings.append(Setting(study, name, overrides, folder))
    for folder, config in sweep.configs.items():
        _check_previous(sweep.output / "runs" / folder, config)


def _free_folder(sweep: Sweep, study: str, name: str) -> str:
    for candidate in (_slug(name), _slug(f"{study}-{name}")):
        if candidate not in sweep.configs and candidate != DEFAULT_FOLDER:
            return candidate
    raise ValueError(
        f"{sweep.source}: run {name!r} of study {study!r} maps to an existing folder; rename it"
    )


def _build(values: dict[str, Any], overrides: dict[str, Any], where: str) -> TrainConfig:
    """base + overrides as a ``TrainConfig``, with errors that say where they come from."""
    managed = sorted((set(values) | set(overrides)) & set(MANAGED))
    if managed:
        raise ValueError(
            f"{where}: {', '.join(managed)} is set by the runner (DIR/runs/<name>); remove it"
        )
    try:
        config = config_from_dict({**values, **overrides}, source=where)
    except (ValueError, TypeError) as error:
        raise ValueError(str(error) if where in str(error) else f"{where}: {error}") from None
    _check_types(config, where)
    if config.data and not looks_like_hub_id(config.data) and not Path(config.data).is_file():
        raise ValueError(f"{where}: training data {config.data!r} not found")
    return config


def _check_types(config: TrainConfig, where: str) -> None:
    """Catch ``lr: fast`` before an hour of runs fails on it."""
    hints = typing.get_type_hints(TrainConfig)
    for option in fields(TrainConfig):
        hint = hints[option.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        allowed = tuple(
            typing.get_origin(a) or a for a in (typing.get_args(hint) if union else (hint,))
        )
        if float in allowed:
            allowed += (int,)
        value = getattr(config, option.name)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"{where}: option {option.name} must be {hint}, got {value!r}")


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _auto_name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={_show(v)}" for k, v in overrides.items()) or DEFAULT_FOLDER


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "run"


def _config_key(config: TrainConfig) -> str:
    values = {k: v for k, v in config.to_dict().items() if k not in MANAGED}
    return json.dumps(values, sort_keys=True)


def _embedding_key(config: TrainConfig) -> str:
    return json.dumps({key: getattr(config, key) for key in EMBEDDING}, sort_keys=True)


def _check_previous(folder: Path, config: TrainConfig) -> None:
    """A folder left by an earlier sweep must hold the same run, or results would mix."""
    path = folder / "train_config.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    new = config.to_dict()
    changed = [k for k in new if k not in MANAGED and old.get(k) != new[k]]
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise ValueError(
            f"{folder} holds a run with other options ({details}); use another --output "
            "or delete that folder"
        )


# --------------------------------------------------------------------------- running


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
    triplets: dict[tuple[str, int | None], Triplets] = {}
    for embedding in sweep.embeddings():
        path = _base_path(sweep, embedding)
        if _pending(path, retry_failed):
            with _cpu_lock():
                atomic_write_json(path, _score_base(sweep, embedding))
            _write_outputs(sweep, command)
    for number, folder in enumerate(folders, 1):
        path = sweep.output / "runs" / folder / "result.json"
        if not _pending(path, retry_failed):
            logger.info(
                "ablate: [%d/%d] %s finished already, skipped", number, len(folders), folder
            )
            continue
        logger.info("ablate: [%d/%d] %s", number, len(folders), folder)
        with _cpu_lock():
            record = _train_and_score(sweep, sweep.configs[folder], triplets)
        atomic_write_json(path, record)
        _write_outputs(sweep, command)
    return _write_outputs(sweep, command, plots=True)


def _pending(path: Path, retry_failed: bool) -> bool:
    if not path.is_file():
        return True
    return retry_failed and _load(path).get("status") == "failed"


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
    sweep: Sweep, config: TrainConfig, cache: dict[tuple[str, int | None], Triplets]
) -> dict[str, Any]:
    """Train (or finish training) one run and score it; any exception becomes a failed record."""
    began = time.perf_counter()
    folder = Path(config.output)
    record: dict[str, Any] = {"config": config.to_dict(), "status": "failed", "error": None}
    try:
        if not (folder / "adapter_model.safetensors").is_file():  # saved once training ends
            key = (config.data, config.limit)
            if key not in cache:
                cache[key] = load_triplets(config.data, limit=config.limit)
            train(config, data=cache[key])
        gc.collect()
        embedder = Embedder.from_pretrained(adapter=folder)
        record["eval"] = evaluate(embedder, sweep.tasks, sweep.data_dir, sweep.eval_batch_size)
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
        options = {k: v for k, v in embedding.items() if k != "model"}
        embedder = Embedder.from_pretrained(embedding["model"], **options)
        record["eval"] = evaluate(embedder, sweep.tasks, sweep.data_dir, sweep.eval_batch_size)
        record["status"] = "ok"
    except Exception as error:
        logger.exception("ablate: base model %s failed", embedding)
        record["error"] = f"{type(error).__name__}: {error}"
    finally:
        gc.collect()
    record["wall_s"] = round(time.perf_counter() - began, 1)
    record["finished_at"] = _now()
    return record


def _base_path(sweep: Sweep, embedding: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(embedding, sort_keys=True).encode()).hexdigest()[:12]
    return sweep.output / "base-model" / f"{digest}.json"


def _log_summary(path: Path, batch_size: int) -> dict[str, Any]:
    """Final loss and summed step time from ``log.jsonl`` (exact across resumes)."""
    steps = _read_log(path)
    if not steps:
        return {"steps_done": 0, "final_loss": None, "train_s": None}
    return {
        "steps_done": steps[-1]["step"],
        "final_loss": steps[-1]["loss"],
        "train_s": round(sum(batch_size / s["triplets_per_s"] for s in steps), 3),
    }


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- results


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
    result = record["eval"]
    return result["average"]["spearman"] if task is None else result["tasks"][task]["spearman"]


def _rows(sweep: Sweep) -> tuple[list[_Row], list[_Row]]:
    """(base-model rows, run rows in plan order), read from the files on disk."""
    base_rows = []
    for embedding in sweep.embeddings():
        path = _base_path(sweep, embedding)
        options = {k: embedding[k] for k in sweep.varied if k in embedding}
        key = json.dumps(embedding, sort_keys=True)
        name = _embedding_name(sweep, embedding)
        record = _load(path) if path.is_file() else None
        base_rows.append(_Row("base-model", name, "", options, (), key, record))
    bases = {row.embedding: row.record for row in base_rows}
    run_rows = []
    for setting in sweep.settings:
        config = sweep.configs[setting.folder]
        path = sweep.output / "runs" / setting.folder / "result.json"
        key = _embedding_key(config)
        run_rows.append(
            _Row(
                setting.study,
                setting.name,
                setting.folder,
                {k: getattr(config, k) for k in sweep.varied},
                tuple(setting.overrides),
                key,
                _load(path) if path.is_file() else None,
                bases.get(key),
            )
        )
    return base_rows, run_rows


def _embedding_name(sweep: Sweep, embedding: dict[str, Any]) -> str:
    changed = [f"{k}={_show(v)}" for k, v in embedding.items() if getattr(sweep.base, k) != v]
    return "base model" + (f" ({', '.join(changed)})" if changed else "")


def _write_outputs(sweep: Sweep, command: str, plots: bool = False) -> Path:
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
            *(_show(row.options[k]) if k in row.options else "" for k in sweep.varied),
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


# --------------------------------------------------------------------------- report


def _report(sweep: Sweep, base_rows: list[_Row], run_rows: list[_Row], command: str) -> str:
    unique = {r.folder: r for r in run_rows}
    records = [r.record for r in base_rows + list(unique.values()) if r.record]
    done = [r for r in unique.values() if r.record]
    lines = [
        f"# Ablation: {Path(sweep.source).name} on `{sweep.base.model}`",
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
    return [*lines, ""]


def _md(value: float | None, empty: str = "–", digits: int = 2) -> str:
    if value is None:
        return empty
    return f"{value:.{digits}f}" if math.isfinite(value) else "nan"


def _option(value: Any) -> str:
    """An option value in a table cell; strings quoted so a prompt's spaces show."""
    return f"`{value!r}`" if isinstance(value, str) else _show(value)


def _setting_text(sweep: Sweep) -> str:
    base = sweep.base
    length = f"{base.steps} steps" if base.epochs is None else f"{base.epochs} epochs"
    text = (
        f"{length} x {base.batch_size} triplets from `{base.data}`, lr {base.lr:g}, "
        f"{base.dtype}; tasks: {', '.join(sweep.tasks)} ({len(sweep.tasks)} of the "
        f"{len(ALL_TASKS)} paper tasks)"
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
    changed = {k: v for k, v in config.to_dict().items() if v != defaults[k] and k not in MANAGED}
    return ", ".join(f"{k}={_show(v)}" for k, v in changed.items()) or "the paper's defaults"


def _time_text(records: list[dict[str, Any]]) -> str:
    if not records:
        return "nothing has run yet"
    compute = sum(r.get("wall_s", 0.0) for r in records) / 60
    return (
        f"{compute:.1f} min of compute (training + scoring, summed over runs and base-model "
        f"scorings, excluding waits for the CPU lock); last run finished "
        f"{max(r['finished_at'] for r in records)}"
    )


# --------------------------------------------------------------------------- plots


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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def _average_chart(sweep: Sweep, base_rows: list[_Row], run_rows: list[_Row]) -> bytes:
    """Average per setting, one panel per study; a black bar marks the base model."""
    fig, panels = _panels(run_rows)
    values = [v for r in run_rows + base_rows if (v := r.score(None)) is not None]
    low, high = min([0.0, *values]), max([1.0, *values])
    pad = 0.15 * (high - low)
    for ax, _, rows in panels:
        x = np.arange(len(rows))
        averages = [r.score(None) for r in rows]
        bars = ax.bar(x, [_nan(v) for v in averages], 0.6, color="#2f6fdf", label="fine-tuned")
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
        panels[0][0].legend(loc="upper left", bbox_to_anchor=(0, -0.25), fontsize=7, ncol=2)
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
            steps = _read_log(sweep.output / "runs" / row.folder / "log.jsonl")
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
