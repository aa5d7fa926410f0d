"""STS benchmark files: the task registry, data-dir lookup and a strict TSV reader.

Files follow ``/work/shared/data/README.md``: UTF-8 TSV, one header row, no quoting
(sentences contain ``"``), first three columns ``sentence1, sentence2, score``.
Sentences are kept byte-for-byte, including leading and trailing spaces.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmembed.data._text import read_text, split_lines
from lmembed.data.errors import DataError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "LMEMBED_DATA_DIR"
HEADER = ("sentence1", "sentence2", "score")


@dataclass(frozen=True)
class TaskInfo:
    """Where a task lives under the data dir and how many pairs the canonical release has."""

    name: str
    filename: str
    count: int


TASKS: dict[str, TaskInfo] = {
    info.name: info
    for info in (
        TaskInfo("sts12", "sts/sts12.tsv", 3108),
        TaskInfo("sts13", "sts/sts13.tsv", 1500),
        TaskInfo("sts14", "sts/sts14.tsv", 3750),
        TaskInfo("sts15", "sts/sts15.tsv", 3000),
        TaskInfo("sts16", "sts/sts16.tsv", 1186),
        TaskInfo("sts17", "sts/sts17_en-en.tsv", 250),
        TaskInfo("stsb", "sts/stsb_test.tsv", 1379),
        TaskInfo("biosses", "sts/biosses.tsv", 100),
        TaskInfo("sickr", "sts/sickr_full.tsv", 9927),
        TaskInfo("sickr-test", "sts/sickr_test.tsv", 4927),
        TaskInfo("stsb-dev", "sts/stsb_dev.tsv", 1500),
    )
}
# The nine MTEB English STS tasks; sickr is MTEB's full SICK-R (train+trial+test).
ALL_TASKS = ("sts12", "sts13", "sts14", "sts15", "sts16", "sts17", "stsb", "biosses", "sickr")
QUICK_TASKS = ("stsb", "biosses", "sts17")
_GROUPS = {"all": ALL_TASKS, "quick": QUICK_TASKS}


@dataclass(frozen=True)
class STSTask:
    """One STS test set: ``scores[i]`` is the gold similarity of the i-th sentence pair."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray
    path: Path

    def __len__(self) -> int:
        return len(self.scores)


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """Expand ``"all"``, ``"quick"`` or ``"stsb,biosses"`` (or a list of those) to task names.

    Order is kept and duplicates are dropped, so ``"quick,stsb"`` evaluates stsb once.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in (p.strip().lower() for p in parts):
        if not part:
            continue
        if part not in _GROUPS and part not in TASKS:
            valid = ", ".join([*_GROUPS, *TASKS])
            raise ValueError(f"unknown STS task {part!r}; valid names: {valid}")
        names.extend(_GROUPS.get(part, (part,)))
    if not names:
        raise ValueError(f"no STS tasks given; use 'all', 'quick' or names from {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The explicit ``data_dir``, else ``$LMEMBED_DATA_DIR``; it must exist."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise DataError(
            None,
            "no data dir given",
            hint=f"pass --data-dir DIR, set {DATA_DIR_ENV}=DIR, "
            "or fetch the data with `lmembed data download --to DIR`",
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(
            path,
            "data dir not found",
            hint=f"check --data-dir / {DATA_DIR_ENV}, or run `lmembed data download --to {path}`",
        )
    return path


def load_sts(name: str, data_dir: str | Path | None = None) -> STSTask:
    """Read one task from the data dir. Raises ``DataError`` naming file, line and column."""
    if name not in TASKS:
        raise ValueError(f"unknown STS task {name!r}; valid names: {', '.join(TASKS)}")
    info = TASKS[name]
    root = resolve_data_dir(data_dir)
    path = root / info.filename
    if not path.is_file():
        raise DataError(
            path,
            f"file for STS task {name!r} not found",
            hint=f"run `lmembed data download --to {root}` or point --data-dir / "
            f"{DATA_DIR_ENV} at a folder that has {info.filename}",
        )
    sentences1, sentences2, scores = _read_tsv(path)
    if len(scores) != info.count:
        logger.warning(
            "%s: task %s has %d pairs, the canonical release has %d; scores will not be "
            "comparable with published numbers",
            path,
            name,
            len(scores),
            info.count,
        )
    return STSTask(name, sentences1, sentences2, np.asarray(scores, dtype=np.float64), path)


def _read_tsv(path: Path) -> tuple[list[str], list[str], list[float]]:
    lines = split_lines(read_text(path, expected="a header row sentence1<TAB>sentence2<TAB>score"))
    header = lines[0].split("\t")
    if tuple(header[:3]) != HEADER:
        raise DataError(
            path,
            f"header starts with {header[:3]}, expected {list(HEADER)}",
            line=1,
            hint="the first line must be sentence1<TAB>sentence2<TAB>score (tab-separated)",
        )
    sentences1: list[str] = []
    sentences2: list[str] = []
    scores: list[float] = []
    for number, line in enumerate(lines[1:], 2):
        cells = line.split("\t")
        if len(cells) < 3:
            raise DataError(
                path,
                f"{len(cells)} tab-separated column(s), need at least 3",
                line=number,
                hint="separate sentence1, sentence2 and score with tabs; remove blank lines",
            )
        sentences1.append(cells[0])
        sentences2.append(cells[1])
        scores.append(_score(path, number, cells[2]))
    if not scores:
        raise DataError(path, "no sentence pairs after the header", line=2)
    return sentences1, sentences2, scores


def _score(path: Path, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(
            path,
            f"score {text!r} is not a number",
            line=line,
            column="score",
            hint="the third column must be the gold similarity, e.g. 3.8",
        )
    return value
