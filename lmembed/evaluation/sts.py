"""STS scoring: Spearman/Pearson of cosine similarity against gold scores, MTEB-style.

``evaluate`` returns an ``STSResult``; its JSON (``to_dict``) is what other tools read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from itertools import chain
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.stats import pearsonr, spearmanr
from tqdm.auto import tqdm

from lmembed.data.sts import STSTask, is_sts_file, load_sts, resolve_data_dir, resolve_tasks
from lmembed.evaluation.result import Result
from lmembed.io import atomic_write_json, cache_root, folder_fingerprint
from lmembed.quantization import unit_rows

logger = logging.getLogger(__name__)

# What a result records of the embedding function: fixed keys (the JSON shape other tools
# read), plus the asymmetric prompts when they are set.
RESULT_SPEC_KEYS = ("model", "adapter", "prompt", "pooling", "max_length", "dtype")
OPTIONAL_SPEC_KEYS = ("query_prompt", "document_prompt")
# Bump when scoring changes, so cached scores from older code are not reused.
SCORER_VERSION = 1


class EncoderSpec(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class Encoder(Protocol):
    """Anything that embeds texts; ``spec.to_dict()`` describes the embedding function."""

    spec: EncoderSpec

    def encode(
        self, texts: list[str], batch_size: int = 32, show_progress: bool = True
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class TaskScore:
    """Correlations x100 over ``pairs`` sentence pairs."""

    spearman: float
    pearson: float
    pairs: int


METRICS = ("spearman", "pearson")


@dataclass
class STSResult(Result):
    """Scores of one embedding function on STS tasks (x100), and what produced them.

    JSON shape (``to_dict``): ``{<spec fields>, "tasks": {name: {"spearman", "pearson",
    "pairs"}}, "average": {"spearman", "pearson"}, "lmembed_version", "elapsed_s"}``,
    plus ``"base"`` (the same shape) when compared with the base model.
    """

    spec: dict[str, Any]
    tasks: dict[str, TaskScore]
    lmembed_version: str = "unknown"
    elapsed_s: float = 0.0
    base: STSResult | None = None

    KIND = "STS"

    def score(self, task: str, metric: str = "spearman") -> float | None:
        """One task's score, or the average over all tasks (``task="average"``)."""
        if task == "average":
            return self.average_over(list(self.tasks), metric)
        found = self.tasks.get(task)
        return None if found is None else getattr(found, metric)

    def average_over(self, names: list[str], metric: str = "spearman") -> float | None:
        if not names:
            return None
        return float(np.mean([getattr(self.tasks[n], metric) for n in names]))

    def label(self) -> str:
        parts = [str(self.spec.get("model"))]
        if self.spec.get("adapter"):
            parts.append(f"+ adapter {self.spec['adapter']}")
        if self.spec.get("pooling"):
            parts.append(f"({self.spec['pooling']} pooling)")
        return " ".join(parts)

    def task_dicts(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(score) for name, score in self.tasks.items()}

    def averages(self) -> dict[str, float | None]:
        return {m: self.score("average", m) for m in METRICS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> STSResult:
        reserved = {"tasks", "average", "lmembed_version", "elapsed_s", "base", "retrieval"}
        return cls(
            spec={k: v for k, v in data.items() if k not in reserved},
            tasks={name: TaskScore(**score) for name, score in data["tasks"].items()},
            lmembed_version=data.get("lmembed_version", "unknown"),
            elapsed_s=data.get("elapsed_s", 0.0),
            base=cls.from_dict(data["base"]) if data.get("base") else None,
        )

    def to_markdown(self) -> str:
        """One result as a markdown table: task, Spearman, Pearson, pairs, plus the average."""
        lines = [
            f"**{self.label()}**",
            "",
            "| task | Spearman | Pearson | pairs |",
            "|---|---:|---:|---:|",
        ]
        for name, score in self.tasks.items():
            lines.append(f"| {name} | {score.spearman:.2f} | {score.pearson:.2f} | {score.pairs} |")
        spearman, pearson = (format_score(self.score("average", m)) for m in METRICS)
        lines.append(f"| **average** | {spearman} | {pearson} | |")
        return "\n".join(lines) + "\n"

    def compare(self, base: STSResult, metric: str = "spearman") -> str:
        """Markdown side-by-side of ``base`` and this result with the change per task.

        The average row is over the tasks both results have, so it is a fair comparison
        even when one run covered more tasks.
        """
        names = list(dict.fromkeys([*base.tasks, *self.tasks]))
        lines = [
            f"base: {base.label()}  ",
            f"tuned: {self.label()}",
            "",
            f"| task ({metric} x100) | base | tuned | Δ |",
            "|---|---:|---:|---:|",
        ]
        for name in names:
            before, after = base.score(name, metric), self.score(name, metric)
            lines.append(
                f"| {name} | {format_score(before)} | {format_score(after)} | "
                f"{_delta(before, after)} |"
            )
        common = common_tasks(base, self)
        if common:
            before, after = base.average_over(common, metric), self.average_over(common, metric)
            lines.append(
                f"| **average** ({len(common)} tasks) | {before:.2f} | {after:.2f} | "
                f"{_delta(before, after)} |"
            )
        return "\n".join(lines) + "\n"


def common_tasks(*results: STSResult | None) -> list[str]:
    """Tasks every given result has, in the order of the first: averages over these are fair."""
    present = [r for r in results if r is not None]
    names = list(dict.fromkeys(name for r in present for name in r.tasks))
    return [n for n in names if all(n in r.tasks for r in present)]


def format_score(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def score_task(
    encoder: Encoder, task: STSTask, batch_size: int = 32, show_progress: bool = True
) -> TaskScore:
    """Encode each distinct sentence once, then correlate pair cosines with gold scores."""
    rows: dict[str, int] = {}
    for sentence in chain(task.sentences1, task.sentences2):
        rows.setdefault(sentence, len(rows))
    texts = list(rows)
    vectors = np.asarray(encoder.encode(texts, batch_size=batch_size, show_progress=show_progress))
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(
            f"encoder returned shape {vectors.shape} for {len(texts)} texts; expected "
            f"({len(texts)}, dim)"
        )
    if not np.isfinite(vectors).all():
        raise ValueError(f"encoder returned NaN or infinite embeddings on task {task.name}")
    vectors = unit_rows(vectors, np.float64)
    left = vectors[[rows[s] for s in task.sentences1]]
    right = vectors[[rows[s] for s in task.sentences2]]
    cosine = np.einsum("ij,ij->i", left, right)
    return TaskScore(
        spearman=float(spearmanr(task.scores, cosine).statistic) * 100,
        pearson=float(pearsonr(task.scores, cosine).statistic) * 100,
        pairs=len(task),
    )


def evaluate(
    encoder: Encoder,
    tasks: str | Sequence[str] = "all",
    data_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    cache: bool | None = None,
) -> STSResult:
    """Score ``encoder`` on STS ``tasks``.

    ``cache=None`` reuses per-task scores from ``cache_root()/scores`` only for a base
    model (no adapter); ``True``/``False`` force it.
    """
    started = time.perf_counter()
    spec = result_spec(encoder.spec.to_dict())
    use_cache = spec.get("adapter") is None if cache is None else cache
    names = resolve_tasks(tasks)
    # Own STS files need no data dir; built-in task names do.
    root = resolve_data_dir(data_dir) if not all(map(is_sts_file, names)) else None
    scores: dict[str, TaskScore] = {}
    bar = tqdm(names, desc="STS", unit="task", disable=not progress)
    for name in bar:
        bar.set_description(f"STS {name}")
        task = load_sts(name, root)
        key = _cache_key(spec, task) if use_cache else None
        score = _cache_get(key) if key else None
        if score is None:
            score = score_task(encoder, task, batch_size, show_progress=progress)
            if key:
                _cache_put(key, score)
        scores[name] = score
        bar.set_postfix({name: f"{score.spearman:.2f}"})
    return STSResult(spec, scores, _version(), round(time.perf_counter() - started, 3))


def result_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of an embedding spec that results record (``RESULT_SPEC_KEYS`` + set prompts)."""
    recorded = {key: spec.get(key) for key in RESULT_SPEC_KEYS}
    recorded.update({k: spec[k] for k in OPTIONAL_SPEC_KEYS if spec.get(k) is not None})
    return recorded


def _delta(before: float | None, after: float | None) -> str:
    return "–" if before is None or after is None else f"{after - before:+.2f}"


def _version() -> str:
    try:
        return metadata.version("lmembed")
    except metadata.PackageNotFoundError:
        return "unknown"


def _cache_key(spec: dict[str, Any], task: STSTask) -> str:
    """Hash of everything that decides a task's score: encoder settings and data bytes.

    Local model/adapter folders are fingerprinted by file sizes and mtimes, so a
    checkpoint rewritten in place is scored again.
    """
    payload = {
        "scorer": SCORER_VERSION,
        "spec": spec,
        "task": task.name,
        "data_sha256": hashlib.sha256(task.path.read_bytes()).hexdigest(),
        "model_files": folder_fingerprint(spec["model"]),
        "adapter_files": folder_fingerprint(spec["adapter"]),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cache_get(key: str) -> TaskScore | None:
    path = cache_root() / "scores" / f"{key}.json"
    try:
        score = TaskScore(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        logger.warning("%s: ignoring unreadable cached score (%s)", path, err)
        return None
    logger.info("using cached score %s", path)
    return score


def _cache_put(key: str, score: TaskScore) -> None:
    atomic_write_json(cache_root() / "scores" / f"{key}.json", asdict(score))
