"""STS scoring: Spearman/Pearson of cosine similarity against gold scores, MTEB-style.

Results are plain dicts (see ``evaluate``) because other tools read the JSON.
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

from lmembed.data.sts import STSTask, load_sts, resolve_data_dir, resolve_tasks
from lmembed.io import atomic_write_json, cache_root

logger = logging.getLogger(__name__)

SPEC_KEYS = ("model", "adapter", "prompt", "pooling", "max_length", "dtype")
# Bump when scoring changes, so cached scores from older code are not reused.
SCORER_VERSION = 1


class EncoderSpec(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class Encoder(Protocol):
    """Anything that embeds texts; ``spec.to_dict()`` has the keys in ``SPEC_KEYS``."""

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


def score_task(
    encoder: Encoder, task: STSTask, batch_size: int = 32, show_progress: bool = True
) -> TaskScore:
    """Encode each distinct sentence once, then correlate pair cosines with gold scores."""
    rows: dict[str, int] = {}
    for sentence in chain(task.sentences1, task.sentences2):
        rows.setdefault(sentence, len(rows))
    texts = list(rows)
    # A float64 copy: normalised in place below without touching the encoder's array.
    vectors = np.array(
        encoder.encode(texts, batch_size=batch_size, show_progress=show_progress),
        dtype=np.float64,
    )
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(
            f"encoder returned shape {vectors.shape} for {len(texts)} texts; expected "
            f"({len(texts)}, dim)"
        )
    if not np.isfinite(vectors).all():
        raise ValueError(f"encoder returned NaN or infinite embeddings on task {task.name}")
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
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
) -> dict[str, Any]:
    """Score ``encoder`` on STS ``tasks``; returns the result dict saved as JSON.

    Shape: ``{"model", "adapter", "prompt", "pooling", "max_length", "dtype",
    "tasks": {name: {"spearman", "pearson", "pairs"}}, "average": {"spearman", "pearson"},
    "lmembed_version", "elapsed_s"}``. ``cache=None`` reuses per-task scores from
    ``cache_root()/scores`` only for a base model (no adapter); ``True``/``False`` force it.
    """
    started = time.perf_counter()
    spec = {key: encoder.spec.to_dict().get(key) for key in SPEC_KEYS}
    use_cache = spec["adapter"] is None if cache is None else cache
    root = resolve_data_dir(data_dir)
    names = resolve_tasks(tasks)
    scores: dict[str, dict[str, Any]] = {}
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
        scores[name] = asdict(score)
        bar.set_postfix({name: f"{score.spearman:.2f}"})
    return {
        **spec,
        "tasks": scores,
        "average": {
            metric: float(np.mean([s[metric] for s in scores.values()]))
            for metric in ("spearman", "pearson")
        },
        "lmembed_version": _version(),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def save_results(result: dict[str, Any], path: str | Path) -> Path:
    """Write a result dict as JSON, atomically."""
    atomic_write_json(path, result)
    return Path(path)


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a result JSON written by ``save_results``; checks the keys other code relies on."""
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(result, dict) or not {"tasks", "average"} <= result.keys():
        raise ValueError(f"{path}: not an lmembed STS result (needs 'tasks' and 'average')")
    return result


def to_markdown(result: dict[str, Any]) -> str:
    """One result as a markdown table: task, Spearman, Pearson, pairs, plus the average."""
    lines = [
        f"**{_label(result)}**",
        "",
        "| task | Spearman | Pearson | pairs |",
        "|---|---:|---:|---:|",
    ]
    for name, score in result["tasks"].items():
        lines.append(
            f"| {name} | {score['spearman']:.2f} | {score['pearson']:.2f} | {score['pairs']} |"
        )
    average = result["average"]
    lines.append(f"| **average** | {average['spearman']:.2f} | {average['pearson']:.2f} | |")
    return "\n".join(lines) + "\n"


def compare(base: dict[str, Any], tuned: dict[str, Any], metric: str = "spearman") -> str:
    """Markdown side-by-side of two results with the change per task.

    The average row is over the tasks both results have, so it is a fair comparison
    even when one run covered more tasks.
    """
    names = list(dict.fromkeys([*base["tasks"], *tuned["tasks"]]))
    lines = [
        f"base: {_label(base)}  ",
        f"tuned: {_label(tuned)}",
        "",
        f"| task ({metric} x100) | base | tuned | Δ |",
        "|---|---:|---:|---:|",
    ]
    for name in names:
        before = base["tasks"].get(name, {}).get(metric)
        after = tuned["tasks"].get(name, {}).get(metric)
        lines.append(f"| {name} | {_num(before)} | {_num(after)} | {_delta(before, after)} |")
    common = [n for n in names if n in base["tasks"] and n in tuned["tasks"]]
    if common:
        before = float(np.mean([base["tasks"][n][metric] for n in common]))
        after = float(np.mean([tuned["tasks"][n][metric] for n in common]))
        lines.append(
            f"| **average** ({len(common)} tasks) | {before:.2f} | {after:.2f} | "
            f"{_delta(before, after)} |"
        )
    return "\n".join(lines) + "\n"


def _label(result: dict[str, Any]) -> str:
    parts = [str(result.get("model"))]
    if result.get("adapter"):
        parts.append(f"+ adapter {result['adapter']}")
    if result.get("pooling"):
        parts.append(f"({result['pooling']} pooling)")
    return " ".join(parts)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


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
        "model_files": _folder_fingerprint(spec["model"]),
        "adapter_files": _folder_fingerprint(spec["adapter"]),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _folder_fingerprint(location: Any) -> list[tuple[str, int, int]] | None:
    if not location or not Path(str(location)).is_dir():
        return None
    root = Path(str(location))
    return [
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]


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
