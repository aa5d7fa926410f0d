"""Which columns hold the anchor, the positive and the hard negatives of a training example.

Layouts are detected from the column names (``PRESETS``) or named with a column mapping
(``--columns anchor=question,positive=answer,negatives=neg_*``):

* pairs ``(anchor, positive)``: in-batch negatives only;
* triplets ``(anchor, positive, negative)``;
* k negatives ``(anchor, positive, negative_1 ... negative_k)``, or one list cell of them;
* texts only: one text column (``text``, the table's only column, or ``--columns
  anchor=COL`` alone) and no pairs, for distillation alone (``--teacher``, ``--loss none``):
  each text is scored against the other texts of its batch.

A negatives cell may be text (one negative) or a list of texts (jsonl, parquet), so all
three shapes are one rule. A list-valued *positive* (FlagEmbedding's ``pos``) uses its
first item; the rows whose other positives go unused are counted for the log.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmembed.data.errors import DataError

ROLES = ("anchor", "positive", "negatives")
COLUMNS_FLAG = "--columns anchor=COL,positive=COL,negatives=COL_OR_GLOB"


@dataclass(frozen=True)
class Preset:
    name: str
    anchor: str
    positive: str
    negatives: tuple[str, ...]


PRESETS = (
    Preset("SimCSE", "sent0", "sent1", ("hard_neg",)),
    Preset("sentence-transformers", "anchor", "positive", ("negative", "negative_*")),
    Preset("FlagEmbedding", "query", "pos", ("neg",)),
    Preset(
        "query/positive/negatives", "query", "positive", ("negatives", "negative", "negative_*")
    ),
)


@dataclass(frozen=True)
class Example:
    """One row; ``positive`` is ``None`` for text-only data."""

    anchor: str
    positive: str | None
    negatives: tuple[str, ...]
    unused_positives: int = 0


@dataclass(frozen=True)
class Layout:
    """Resolved column names for one table (``positive`` is ``None``: text only)."""

    name: str
    anchor: str
    positive: str | None
    negatives: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.anchor, *([self.positive] if self.positive else []), *self.negatives)

    def describe(self) -> str:
        if self.positive is None:
            return f"{self.name}: text={self.anchor} (texts only)"
        negatives = f", negatives={'+'.join(self.negatives)}" if self.negatives else " (pairs)"
        return f"{self.name}: anchor={self.anchor}, positive={self.positive}{negatives}"

    def example(self, record: Mapping[str, Any], source: str, line: int, unit: str) -> Example:
        """The example in ``record``; raises ``DataError`` naming the row and column."""
        missing = [c for c in self.columns if c not in record]
        if missing:
            raise missing_columns(source, missing, list(record), line=line, unit=unit)
        anchor = _text(record[self.anchor], source, line, self.anchor, unit)
        if self.positive is None:
            return Example(anchor, None, ())
        positives = _texts(record[self.positive], source, line, self.positive, unit)
        if not positives:
            raise DataError(
                source, "empty list", line=line, column=self.positive, unit=unit,
                hint="give at least one positive or delete the row",
            )  # fmt: skip
        negatives = []
        for column in self.negatives:
            negatives.extend(_texts(record[column], source, line, column, unit))
        return Example(anchor, positives[0], tuple(negatives), len(positives) - 1)


def parse_columns(text: str | None) -> dict[str, str]:
    """``"anchor=q,positive=a,negatives=neg_*"`` as a role -> column (or glob) mapping."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for part in text.split(","):
        role, sep, column = (p.strip() for p in part.partition("="))
        role = "negatives" if role == "negative" else role
        if not sep or role not in ROLES or role in mapping:
            raise ValueError(
                f"--columns: cannot read {part.strip()!r}; write role=column for the roles "
                f"{', '.join(ROLES)}, each once, e.g. anchor=question,positive=answer,"
                "negatives=neg_* (negatives= with nothing means pairs)"
            )
        if not column and role != "negatives":
            raise ValueError(f"--columns: {role}= needs a column name")
        mapping[role] = column
    return mapping


def resolve_layout(
    found: Sequence[str],
    mapping: Mapping[str, str],
    source: str,
    unit: str = "line",
    texts: bool = False,
) -> Layout:
    """The layout of a table with columns ``found``: a preset, overridden by ``mapping``.

    A table with no pair layout and one text column is text-only data, allowed with
    ``texts`` (distillation alone) and otherwise an error that says so.
    """
    line = 1 if unit == "line" else None
    matches = [p for p in PRESETS if p.anchor in found and p.positive in found]
    paired = "anchor" in mapping and "positive" in mapping
    column = None if paired or matches else _text_column(found, mapping)
    if column is not None:
        return _texts_layout(column, found, source, line, unit, texts)
    if paired:
        base = Preset("columns", mapping["anchor"], mapping["positive"], ())
    elif len(matches) == 1:
        base = matches[0]
    else:
        names = " and ".join(p.name for p in matches)
        problem = (
            f"ambiguous layout: the columns fit both {names}"
            if matches
            else "unknown layout: no anchor/positive columns recognised"
        )
        raise DataError(
            source,
            f"{problem} (found: {', '.join(map(str, found)) or 'none'})",
            line=line,
            unit=unit,
            hint=f"name them with {COLUMNS_FLAG} (or columns: in the YAML config)",
        )
    anchor = mapping.get("anchor", base.anchor)
    positive = mapping.get("positive", base.positive)
    missing = [c for c in (anchor, positive) if c not in found]
    if "negatives" in mapping:
        pattern = mapping["negatives"]
        negatives = _matching(found, (pattern,)) if pattern else ()
        if pattern and not negatives:
            missing.append(pattern)
    else:
        negatives = _matching(found, base.negatives)
    if missing:
        raise missing_columns(source, missing, found, line=line, unit=unit)
    name = base.name if not mapping else "columns"
    return Layout(name, anchor, positive, negatives)


def _text_column(found: Sequence[str], mapping: Mapping[str, str]) -> str | None:
    """The text column of text-only data: ``--columns anchor=COL`` alone, else ``text``,
    else a table's only column; ``None`` when the table is none of these."""
    if "positive" in mapping:
        return None
    if "anchor" in mapping:
        return mapping["anchor"]
    if "text" in found:
        return "text"
    return str(found[0]) if len(found) == 1 else None


def _texts_layout(
    column: str, found: Sequence[str], source: str, line: int | None, unit: str, texts: bool
) -> Layout:
    if not texts:
        raise DataError(
            source,
            f"one text column ({column}) and no pairs: such data trains only by distillation "
            f"(found: {', '.join(map(str, found)) or 'none'})",
            line=line,
            unit=unit,
            hint="train by distillation alone with --teacher MODEL --loss none, or name the "
            "pairs with --columns anchor=COL,positive=COL",
        )
    if column not in found:
        raise missing_columns(source, [column], found, line=line, unit=unit)
    return Layout("texts", column, None)


def missing_columns(
    source: str, missing: Sequence[str], found: Sequence[str], *, line: int | None, unit: str
) -> DataError:
    return DataError(
        source,
        f"missing column(s) {', '.join(missing)} (found: {', '.join(map(str, found)) or 'none'})",
        line=line,
        unit=unit,
        hint=f"rename the columns, or map them with {COLUMNS_FLAG}",
    )


def _matching(found: Sequence[str], patterns: Sequence[str]) -> tuple[str, ...]:
    """Columns matching any pattern, in numeric order (negative_2 before negative_10)."""
    hits = {str(c) for c in found for p in patterns if fnmatch.fnmatchcase(str(c), p)}
    return tuple(sorted(hits, key=_natural))


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _texts(value: Any, source: str, line: int, column: str, unit: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [_text(v, source, line, f"{column}[{i}]", unit) for i, v in enumerate(value)]
    return [_text(value, source, line, column, unit)]


def _text(value: Any, source: str, line: int, column: str, unit: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        problem = "empty cell"
    elif not isinstance(value, str):
        problem = f"expected text, got {type(value).__name__} {_short(value)}"
    else:
        return value
    raise DataError(
        source, problem, line=line, column=column, unit=unit,
        hint="fill in the sentence or delete the row",
    )  # fmt: skip


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
