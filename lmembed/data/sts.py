"""STS files: the task registry, data-dir lookup and strict readers.

Built-in files follow the data folder's layout (its ``README.md``): UTF-8 TSV, one
header row, no quoting (sentences contain ``"``), first three columns ``sentence1,
sentence2, score``. A user's own file (``--tasks pairs.tsv``) may also be ``.csv``
(RFC 4180 quoting) or ``.jsonl`` with the same three columns/keys, in any order for
those two. Sentences are kept byte-for-byte, including leading and trailing spaces. A
score outside the task's expected range is a warning, not an error: scales differ
between sets.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmembed.data.errors import DataError
from lmembed.data.records import iter_csv, iter_jsonl, iter_tsv

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "LMEMBED_DATA_DIR"
HEADER = ("sentence1", "sentence2", "score")


@dataclass(frozen=True)
class TaskInfo:
    """Where a task lives under the data dir and how many pairs the canonical release has."""

    name: str
    filename: str
    count: int
    score_range: tuple[float, float] = (0.0, 5.0)


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
        TaskInfo("biosses", "sts/biosses.tsv", 100, (0.0, 4.0)),
        TaskInfo("sickr", "sts/sickr_full.tsv", 9927),
        TaskInfo("sickr-test", "sts/sickr_test.tsv", 4927),
        TaskInfo("stsb-dev", "sts/stsb_dev.tsv", 1500),
    )
}
# The nine MTEB English STS tasks; sickr is MTEB's full SICK-R (train+trial+test).
ALL_TASKS = ("sts12", "sts13", "sts14", "sts15", "sts16", "sts17", "stsb", "biosses", "sickr")
QUICK_TASKS = ("stsb", "biosses", "sts17")
_GROUPS = {"all": ALL_TASKS, "quick": QUICK_TASKS}
FILE_SUFFIXES = (".tsv", ".csv", ".jsonl")
# Own files have no known scale; STS's 0-5 is the common one.
DEFAULT_RANGE = (0.0, 5.0)


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

    A path to an STS file (``.tsv``, ``.csv``, ``.jsonl``, optionally gzipped) is a task
    too, named by the path as given. Order is kept and duplicates are dropped, so
    ``"quick,stsb"`` evaluates stsb once.
    """
    parts = spec.split(",") if isinstance(spec, str) else [str(p) for p in spec]
    names: list[str] = []
    for raw in (p.strip() for p in parts):
        part = raw.lower()
        if not part:
            continue
        if is_sts_file(raw):
            names.append(raw)
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


def is_sts_file(name: str | Path) -> bool:
    """Whether a task name is a path to a user's own STS file rather than a built-in name."""
    suffix = str(name).lower().removesuffix(".gz")
    return str(name).lower() not in TASKS and suffix.endswith(FILE_SUFFIXES)


def load_sts(name: str, data_dir: str | Path | None = None) -> STSTask:
    """Read one task: a built-in name from the data dir, or a path to an own STS file.

    Raises ``DataError`` naming file, line and column.
    """
    if is_sts_file(name):
        return load_sts_file(name)
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
    sentences1, sentences2, scores, lines = _read_tsv(path)
    _check_range(path, scores, lines, info.score_range)
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


def load_sts_file(path: str | Path, expected_range: tuple[float, float] = DEFAULT_RANGE) -> STSTask:
    """A user's STS file (``.tsv``/``.csv``/``.jsonl``, optionally ``.gz``) as a task named by
    its path; scores outside ``expected_range`` are logged as a warning."""
    file = Path(path)
    if not file.is_file():
        raise DataError(file, "STS file not found", hint="check the path given to --tasks")
    suffix = file.name.lower().removesuffix(".gz")
    reader = _read_jsonl if suffix.endswith(".jsonl") else _read_csv
    if suffix.endswith(".tsv"):
        reader = _read_tsv
    sentences1, sentences2, scores, lines = reader(file)
    _check_range(file, scores, lines, expected_range)
    return STSTask(str(path), sentences1, sentences2, np.asarray(scores, dtype=np.float64), file)


Rows = tuple[list[str], list[str], list[float], list[int]]


def _read_tsv(path: Path) -> Rows:
    rows: Rows = ([], [], [], [])
    lines = iter_tsv(path, expected="a header row sentence1<TAB>sentence2<TAB>score")
    for number, cells in lines:
        if number == 1:
            if tuple(cells[:3]) != HEADER:
                raise DataError(
                    path,
                    f"header starts with {cells[:3]}, expected {list(HEADER)}",
                    line=1,
                    hint="the first line must be sentence1<TAB>sentence2<TAB>score (tab-separated)",
                )
            continue
        if len(cells) < 3:
            raise DataError(
                path,
                f"{len(cells)} tab-separated column(s), need at least 3",
                line=number,
                hint="separate sentence1, sentence2 and score with tabs; remove blank lines",
            )
        _append(rows, cells[0], cells[1], _score(path, number, cells[2]), number)
    return _nonempty(path, rows)


def _read_csv(path: Path) -> Rows:
    rows: Rows = ([], [], [], [])
    header: list[str] = []
    where: dict[str, int] = {}
    for number, cells in iter_csv(path, expected="a header row sentence1,sentence2,score"):
        if not header:
            header, where = cells, _columns(path, cells, "comma-separated header")
            continue
        if not cells:
            continue
        if len(cells) != len(header):
            raise DataError(
                path,
                f"{len(cells)} column(s), the header has {len(header)}",
                line=number,
                hint="quote cells that contain commas with double quotes",
            )
        s1, s2, score = (cells[where[c]] for c in HEADER)
        _append(rows, s1, s2, _score(path, number, score), number)
    return _nonempty(path, rows)


def _read_jsonl(path: Path) -> Rows:
    expected = 'one {"sentence1", "sentence2", "score"} a line'
    example = '{"sentence1": "...", "sentence2": "...", "score": 4.2}'
    rows: Rows = ([], [], [], [])
    for number, record in iter_jsonl(path, expected=expected, example=example):
        _columns(path, list(record), "JSON object", number)
        s1, s2 = (_text(path, number, record, key) for key in HEADER[:2])
        score = record["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float, str)):
            score = "not a number"
        _append(rows, s1, s2, _score(path, number, str(score)), number)
    return _nonempty(path, rows)


def _columns(path: Path, names: list[str], what: str, line: int = 1) -> dict[str, int]:
    missing = [c for c in HEADER if c not in names]
    if missing:
        raise DataError(
            path,
            f"{what} lacks {', '.join(missing)} (found {names[:6]})",
            line=line,
            hint="name the columns sentence1, sentence2 and score",
        )
    return {c: names.index(c) for c in HEADER}


def _text(path: Path, line: int, record: dict, key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise DataError(path, f"{key} must be a string", line=line, column=key)
    return value


def _append(rows: Rows, s1: str, s2: str, score: float, line: int) -> None:
    for column, value in zip(rows, (s1, s2, score, line), strict=True):
        column.append(value)


def _nonempty(path: Path, rows: Rows) -> Rows:
    if not rows[2]:
        raise DataError(path, "no sentence pairs after the header", line=2)
    return rows


def _check_range(
    path: Path, scores: list[float], lines: list[int], expected: tuple[float, float]
) -> None:
    """Warn (once per file) about scores outside ``expected``; log the observed range."""
    low, high = min(scores), max(scores)
    outside = [i for i, s in enumerate(scores) if not expected[0] <= s <= expected[1]]
    if outside:
        first = outside[0]
        logger.warning(
            "%s, line %d: score %g is outside the expected range %g-%g (%d of %d scores are; "
            "observed range %g-%g). Scales differ between sets, so this is not an error; "
            "check the file if it should be on a %g-%g scale",
            path,
            lines[first],
            scores[first],
            *expected,
            len(outside),
            len(scores),
            low,
            high,
            *expected,
        )
    logger.info("%s: %d pairs, scores %g-%g", path, len(scores), low, high)


def parse_score(path: str | Path, line: int, value: Any, hint: str, unit: str = "line") -> float:
    """A gold score as a finite float, or a ``DataError`` naming file, line and column."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise DataError(
            path, f"score {value!r} is not a number", line=line, column="score", unit=unit,
            hint=hint,
        )  # fmt: skip
    return score


def _score(path: Path, line: int, text: str) -> float:
    return parse_score(path, line, text, "the third column must be the gold similarity, e.g. 3.8")
