"""STS evaluation of embedding models and before/after reports."""

from lmembed.evaluation.report import write_report
from lmembed.evaluation.result import EvalRun, Result
from lmembed.evaluation.sts import Encoder, STSResult, TaskScore, evaluate, score_task

__all__ = [
    "Encoder",
    "EvalRun",
    "Result",
    "STSResult",
    "TaskScore",
    "evaluate",
    "score_task",
    "write_report",
]
