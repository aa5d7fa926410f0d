"""The one exception the data layer raises, so the CLI can print it without a traceback."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A problem with an input file, located as precisely as possible.

    ``str(err)`` reads like ``"data.csv, line 7, column 'sent1': empty cell; fill it in"``
    so a user can jump straight to the spot. ``unit`` is ``"row"`` for sources without
    text lines (parquet, hub datasets), where ``line`` counts data rows from 1.
    """

    def __init__(
        self,
        path: str | Path | None,
        problem: str,
        *,
        line: int | None = None,
        column: str | None = None,
        hint: str | None = None,
        unit: str = "line",
    ) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.line = line
        self.column = column
        self.hint = hint
        self.unit = unit
        super().__init__(self._message())

    def _message(self) -> str:
        where = [self.path] if self.path else []
        if self.line is not None:
            where.append(f"{self.unit} {self.line}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        text = f"{', '.join(where)}: {self.problem}" if where else self.problem
        return f"{text}; {self.hint}" if self.hint else text
