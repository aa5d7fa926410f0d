"""Sweep files: parse and validate an ablation sweep before anything trains.

A sweep file (``ablations/*.yaml``) names a base training config, the model, the
STS tasks and named studies; each study is a ``grid`` (cartesian product) or a
list of ``runs`` over ``TrainConfig`` options, and every run is base + its
overrides. Runs with the same effective config share one folder,
``DIR/runs/<name>``, and train once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmembed.data import resolve_data_dir, resolve_tasks
from lmembed.data.hub import looks_like_hub_id
from lmembed.data.locate import find_training_data
from lmembed.data.sts import load_sts
from lmembed.options import flat_fields
from lmembed.training.config import TrainConfig, config_from_dict

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
# Where a run reads and writes, not what it does: left out when runs are compared.
LOCATIONS = (*MANAGED, "eval_data_dir")
DEFAULT_FOLDER = "default"


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
        found = {embedding_key(self.configs[s.folder]): None for s in self.settings}
        return [json.loads(key) for key in found]

    def run_dir(self, folder: str) -> Path:
        return self.output / "runs" / folder

    def run_record_path(self, folder: str) -> Path:
        """A run is finished (ok or failed) once this file exists."""
        return self.run_dir(folder) / "result.json"

    def base_record_path(self, embedding: dict[str, Any]) -> Path:
        """The base model's scores for one embedding function (model, prompt, pooling...)."""
        digest = hashlib.sha256(json.dumps(embedding, sort_keys=True).encode()).hexdigest()[:12]
        return self.output / "base-model" / f"{digest}.json"


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
            where: dict[str, Any] = {"output": str(sweep.run_dir(folder)), "resume": True}
            if config.evaluation.eval_data_dir is None:  # scoring while training: sweep's data
                where["eval_data_dir"] = str(sweep.data_dir)
            sweep.configs[folder] = config.replace(**where)
            sweep.settings.append(Setting(study, name, overrides, folder))
    for folder, config in sweep.configs.items():
        _check_previous(sweep.run_dir(folder), config)


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
    for source in config.dataset.data:
        if not looks_like_hub_id(source) and not Path(source).exists():
            raise ValueError(f"{where}: training data {source!r} not found")
    return config


def _check_types(config: TrainConfig, where: str) -> None:
    """Catch ``lr: fast`` before an hour of runs fails on it."""
    values = config.to_dict()
    for option in flat_fields(TrainConfig):
        hint = option.kind
        if option.choices:
            continue  # Literal options are checked by the config itself
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        allowed = tuple(
            typing.get_origin(a) or a for a in (typing.get_args(hint) if union else (hint,))
        )
        if float in allowed:
            allowed += (int,)
        value = values[option.name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"{where}: option {option.name} must be {hint}, got {value!r}")


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _auto_name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={show_value(v)}" for k, v in overrides.items()) or DEFAULT_FOLDER


def show_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "run"


def _config_key(config: TrainConfig) -> str:
    values = {k: v for k, v in config.to_dict().items() if k not in LOCATIONS}
    return json.dumps(values, sort_keys=True)


def embedding_key(config: TrainConfig) -> str:
    """The base model's embedding function for a run: its spec without the adapter."""
    return json.dumps(config.embedding.replace(adapter=None).to_dict(), sort_keys=True)


# What a run saved before an option existed did: the option's default (options are added
# with the old behaviour as their default), so adding one does not orphan earlier runs.
OPTION_DEFAULTS = {flat.name: flat.default for flat in flat_fields(TrainConfig)}


def _check_previous(folder: Path, config: TrainConfig) -> None:
    """A folder left by an earlier sweep must hold the same run, or results would mix."""
    path = folder / "train_config.json"
    if not path.is_file():
        return
    old = {**OPTION_DEFAULTS, **json.loads(path.read_text(encoding="utf-8"))}
    new = config.to_dict()
    changed = [k for k in new if k not in LOCATIONS and old.get(k) != new[k]]
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise ValueError(
            f"{folder} holds a run with other options ({details}); use another --output "
            "or delete that folder"
        )


def read_record(path: Path) -> dict[str, Any] | None:
    """A run's or base model's ``result.json``; None while it has not finished."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
