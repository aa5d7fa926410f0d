"""What every evaluation result is (``Result``: STS and retrieval alike) and what
``lmembed eval`` prints and writes (``EvalRun``).

A result is a dataclass with a ``spec`` (the embedding function's settings), its
``tasks`` and an optional ``base`` (the same for the base model, with
``--compare-base``); its JSON is ``to_dict()``, which ``from_dict`` reads back.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from lmembed.io import atomic_write_json

R = TypeVar("R", bound="Result")


class Result(ABC):
    """The protocol of ``STSResult`` and ``RetrievalResult``.

    Subclasses define the JSON (``to_dict``/``from_dict``) and the tables
    (``to_markdown``, ``compare``); ``save``/``load`` come with it.
    """

    KIND: ClassVar[str]  # what ``load``'s errors call it: "STS", "retrieval"
    spec: dict[str, Any]
    lmembed_version: str
    elapsed_s: float
    base: Result | None

    @abstractmethod
    def task_dicts(self) -> dict[str, dict[str, Any]]:
        """``{task: its scores}`` as the JSON holds them."""

    @abstractmethod
    def averages(self) -> dict[str, float | None]:
        """Each metric's mean over the tasks."""

    def to_dict(self) -> dict[str, Any]:
        """The result's JSON: the spec's fields, tasks, averages, version and time, and
        ``base`` when set."""
        data = {
            **self.spec,
            "tasks": self.task_dicts(),
            "average": self.averages(),
            "lmembed_version": self.lmembed_version,
            "elapsed_s": self.elapsed_s,
        }
        if self.base is not None:
            data["base"] = self.base.to_dict()
        return data

    @classmethod
    @abstractmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """The inverse of ``to_dict``."""

    @abstractmethod
    def to_markdown(self) -> str:
        """One markdown table: a row per task, and the average."""

    @abstractmethod
    def compare(self: R, base: R) -> str:
        """Markdown before (``base``) and after (this result): a row per task with Δ."""

    def save(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON, atomically; returns the path."""
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a file ``save`` wrote; one that is not raises ``ValueError`` naming it."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not JSON ({error})") from None
        if not isinstance(data, dict) or not {"tasks", "average"} <= data.keys():
            raise ValueError(
                f"{path}: not an lmembed {cls.KIND} result (needs 'tasks' and 'average')"
            )
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{path}: not an lmembed {cls.KIND} result ({error!r})") from None


@dataclass
class EvalRun:
    """What one ``lmembed eval`` scored: STS and/or retrieval results, each with its
    ``base`` when compared with the base model."""

    sts: Result | None = None
    retrieval: Result | None = None

    def against(self, base: EvalRun) -> EvalRun:
        """This run with ``base``'s results as the ``base`` of each (``--compare-base``)."""
        return EvalRun(
            None if self.sts is None else replace(self.sts, base=base.sts),
            None if self.retrieval is None else replace(self.retrieval, base=base.retrieval),
        )

    def to_dict(self) -> dict[str, Any]:
        """STS results keep their JSON shape; retrieval results go under ``retrieval``
        (or are the whole file when no STS task ran); each with its ``base`` when compared."""
        if self.sts is None:
            return {} if self.retrieval is None else self.retrieval.to_dict()
        data = self.sts.to_dict()
        if self.retrieval is not None:
            data["retrieval"] = self.retrieval.to_dict()
        return data

    def to_markdown(self) -> str:
        """Each result's table, or its comparison with its ``base``."""
        return "\n".join(
            result.to_markdown() if result.base is None else result.compare(result.base)
            for result in (self.sts, self.retrieval)
            if result is not None
        )

    def save(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON, atomically; returns the path."""
        atomic_write_json(path, self.to_dict())
        return Path(path)
