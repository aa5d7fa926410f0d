"""STS evaluation of embedding models and before/after reports."""

from lmembed.evaluation.report import write_report
from lmembed.evaluation.sts import (
    Encoder,
    STSResult,
    TaskScore,
    compare,
    evaluate,
    load_results,
    save_results,
    score_task,
    to_markdown,
)

__all__ = [
    "Encoder",
    "STSResult",
    "TaskScore",
    "compare",
    "evaluate",
    "load_results",
    "save_results",
    "score_task",
    "to_markdown",
    "write_report",
]
