"""The result protocol STS and retrieval results share (``lmembed.evaluation.result``),
and ``EvalRun``: what ``lmembed eval`` prints and writes, in the shape it always had."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from lmembed.evaluation import EvalRun, Result, STSResult, TaskScore
from lmembed.evaluation.retrieval import RetrievalResult, TaskRetrieval
from lmembed.retrieval.metrics import METRICS

SPEC = {"model": "m", "adapter": "a", "prompt": None, "pooling": "mean", "max_length": 64,
        "dtype": "fp32"}  # fmt: skip
SEARCH_SPEC = {"model": "m", "adapter": "a", "query_prompt": "q: {s}"}


def sts(adapter: str | None, scores: dict[str, float]) -> STSResult:
    tasks = {name: TaskScore(s, s - 1, 10) for name, s in scores.items()}
    return STSResult({**SPEC, "adapter": adapter}, tasks, "0.1", 1.5)


def retrieval(adapter: str | None, shift: float) -> RetrievalResult:
    metrics = {name: 50.0 + shift + i for i, name in enumerate(METRICS)}
    task = TaskRetrieval(metrics, 5, 20)
    return RetrievalResult({**SEARCH_SPEC, "adapter": adapter}, {"toy": task}, "0.1", 2.0)


def tuned_sts() -> STSResult:
    return sts("a", {"stsb": 80.5, "biosses": 70.25})


def base_sts() -> STSResult:
    return sts(None, {"stsb": 50.0, "sts12": 40.0})


def tuned_retrieval() -> RetrievalResult:
    return retrieval("a", 3.0)


def base_retrieval() -> RetrievalResult:
    return retrieval(None, 0.0)


# (tuned, base, a row of to_markdown, a row of tuned.compare(base))
KINDS: dict[str, tuple[Callable[[], Result], Callable[[], Result], str, str]] = {
    "sts": (tuned_sts, base_sts, "| stsb | 80.50 | 79.50 | 10 |",
            "| stsb | 50.00 | 80.50 | +30.50 |"),
    "retrieval": (tuned_retrieval, base_retrieval,
                  "| toy | 53.00 | 54.00 | 55.00 | 56.00 | 57.00 | 58.00 | 5 | 20 |",
                  "| toy | NDCG@10 | 50.00 | 53.00 | +3.00 |"),
}  # fmt: skip
kinds = pytest.mark.parametrize("kind", list(KINDS))


@kinds
def test_both_results_are_results(kind):
    tuned, base, _, _ = KINDS[kind]
    assert isinstance(tuned(), Result) and isinstance(base(), Result)


@kinds
@pytest.mark.parametrize("with_base", [False, True], ids=["alone", "with-base"])
def test_save_load_and_dict_round_trips(kind, with_base, tmp_path):
    tuned, base, _, _ = KINDS[kind]
    result = tuned()
    if with_base:
        result.base = base()
    cls = type(result)
    assert cls.from_dict(result.to_dict()) == result
    path = result.save(tmp_path / "out" / "result.json")
    assert path == tmp_path / "out" / "result.json"
    assert json.loads(path.read_text(encoding="utf-8")) == result.to_dict()
    assert cls.load(path) == result
    assert cls.load(str(path)) == result
    assert list(path.parent.iterdir()) == [path]  # written atomically: no temp file left


@kinds
@pytest.mark.parametrize(
    "text, problem",
    [
        ("{}", "needs 'tasks' and 'average'"),
        ("[1, 2]", "needs 'tasks' and 'average'"),
        ("{not json", "not JSON"),
        ('{"tasks": {"t": {"pairs": 3}}, "average": {}}', "not an lmembed"),
        ('{"tasks": [1], "average": {}}', "not an lmembed"),
    ],
    ids=["empty", "list", "broken", "task-keys", "tasks-list"],
)
def test_loading_a_bad_file_names_the_file_and_the_problem(kind, text, problem, tmp_path):
    cls = type(KINDS[kind][0]())
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(problem)):
        cls.load(path)


@kinds
def test_markdown_and_compare_hold_the_task_rows_and_the_change(kind):
    tuned, base, row, compared = KINDS[kind]
    result = tuned()
    table = result.to_markdown()
    assert row in table and "**average**" in table
    diff = result.compare(base())
    assert compared in diff and "| Δ |" in diff
    assert diff.startswith("base: m") and "tuned: m + adapter a" in diff


# What `lmembed eval --compare-base --output` wrote before the result protocol, for STS and
# retrieval tasks: STS results at the top, retrieval under "retrieval", each with its "base".
BOTH_WITH_BASE = {
    "model": "m", "adapter": "a", "prompt": None, "pooling": "mean", "max_length": 64,
    "dtype": "fp32",
    "tasks": {"stsb": {"spearman": 80.5, "pearson": 79.5, "pairs": 10},
              "biosses": {"spearman": 70.25, "pearson": 69.25, "pairs": 10}},
    "average": {"spearman": 75.375, "pearson": 74.375},
    "lmembed_version": "0.1", "elapsed_s": 1.5,
    "base": {
        "model": "m", "adapter": None, "prompt": None, "pooling": "mean", "max_length": 64,
        "dtype": "fp32",
        "tasks": {"stsb": {"spearman": 50.0, "pearson": 49.0, "pairs": 10},
                  "sts12": {"spearman": 40.0, "pearson": 39.0, "pairs": 10}},
        "average": {"spearman": 45.0, "pearson": 44.0},
        "lmembed_version": "0.1", "elapsed_s": 1.5,
    },
    "retrieval": {
        "model": "m", "adapter": "a", "query_prompt": "q: {s}",
        "tasks": {"toy": {"ndcg@10": 53.0, "mrr@10": 54.0, "map@100": 55.0, "recall@10": 56.0,
                          "recall@100": 57.0, "accuracy@1": 58.0, "queries": 5,
                          "documents": 20}},
        "average": {"ndcg@10": 53.0, "mrr@10": 54.0, "map@100": 55.0, "recall@10": 56.0,
                    "recall@100": 57.0, "accuracy@1": 58.0},
        "lmembed_version": "0.1", "elapsed_s": 2.0,
        "base": {
            "model": "m", "adapter": None, "query_prompt": "q: {s}",
            "tasks": {"toy": {"ndcg@10": 50.0, "mrr@10": 51.0, "map@100": 52.0,
                              "recall@10": 53.0, "recall@100": 54.0, "accuracy@1": 55.0,
                              "queries": 5, "documents": 20}},
            "average": {"ndcg@10": 50.0, "mrr@10": 51.0, "map@100": 52.0, "recall@10": 53.0,
                        "recall@100": 54.0, "accuracy@1": 55.0},
            "lmembed_version": "0.1", "elapsed_s": 2.0,
        },
    },
}  # fmt: skip
# ... and what it printed (two trailing spaces: a markdown line break).
BOTH_WITH_BASE_TABLES = "\n".join([
    "base: m (mean pooling)  ",
    "tuned: m + adapter a (mean pooling)",
    "",
    "| task (spearman x100) | base | tuned | Δ |",
    "|---|---:|---:|---:|",
    "| stsb | 50.00 | 80.50 | +30.50 |",
    "| sts12 | 40.00 | – | – |",
    "| biosses | – | 70.25 | – |",
    "| **average** (1 tasks) | 50.00 | 80.50 | +30.50 |",
    "",
    "base: m  ",
    "tuned: m + adapter a",
    "",
    "| task | metric (x100) | base | tuned | Δ |",
    "|---|---|---:|---:|---:|",
    "| toy | NDCG@10 | 50.00 | 53.00 | +3.00 |",
    "| toy | MRR@10 | 51.00 | 54.00 | +3.00 |",
    "| toy | MAP@100 | 52.00 | 55.00 | +3.00 |",
    "| toy | R@10 | 53.00 | 56.00 | +3.00 |",
    "| toy | R@100 | 54.00 | 57.00 | +3.00 |",
    "| toy | Acc@1 | 55.00 | 58.00 | +3.00 |",
    "",
])  # fmt: skip
RESULT_KEYS = ["tasks", "average", "lmembed_version", "elapsed_s"]
STS_KEYS = [*SPEC, *RESULT_KEYS]
SEARCH_KEYS = [*SEARCH_SPEC, *RESULT_KEYS]


def _written(run: EvalRun, tmp_path) -> str:
    """The file's text, key order and all."""
    return run.save(tmp_path / "scores.json").read_text(encoding="utf-8")


def _text(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def test_eval_json_sts_only(tmp_path):
    run = EvalRun(sts=tuned_sts())
    data = run.to_dict()
    assert list(data) == STS_KEYS
    expected = {k: v for k, v in BOTH_WITH_BASE.items() if k not in ("base", "retrieval")}
    assert _written(run, tmp_path) == _text(expected)
    assert run.to_markdown() == tuned_sts().to_markdown()


def test_eval_json_retrieval_only(tmp_path):
    """No STS task ran: the retrieval result is the whole file."""
    run = EvalRun(retrieval=tuned_retrieval())
    data = run.to_dict()
    assert list(data) == SEARCH_KEYS and "retrieval" not in data
    expected = {k: v for k, v in BOTH_WITH_BASE["retrieval"].items() if k != "base"}
    assert _written(run, tmp_path) == _text(expected)
    assert run.to_markdown() == tuned_retrieval().to_markdown()


def test_eval_json_sts_and_retrieval(tmp_path):
    run = EvalRun(tuned_sts(), tuned_retrieval())
    data = run.to_dict()
    assert list(data) == [*STS_KEYS, "retrieval"] and list(data["retrieval"]) == SEARCH_KEYS
    expected = {k: v for k, v in BOTH_WITH_BASE.items() if k != "base"}
    expected["retrieval"] = {k: v for k, v in expected["retrieval"].items() if k != "base"}
    assert _written(run, tmp_path) == _text(expected)
    assert run.to_markdown() == tuned_sts().to_markdown() + "\n" + tuned_retrieval().to_markdown()


def test_eval_json_sts_and_retrieval_with_base(tmp_path):
    tuned, base = EvalRun(tuned_sts(), tuned_retrieval()), EvalRun(base_sts(), base_retrieval())
    run = tuned.against(base)
    data = run.to_dict()
    assert list(data) == [*STS_KEYS, "base", "retrieval"]
    assert list(data["base"]) == STS_KEYS
    assert list(data["retrieval"]) == [*SEARCH_KEYS, "base"]
    assert list(data["retrieval"]["base"]) == SEARCH_KEYS
    assert _written(run, tmp_path) == _text(BOTH_WITH_BASE)
    assert run.to_markdown() == BOTH_WITH_BASE_TABLES
    assert tuned.sts.base is None and tuned.retrieval.base is None  # `against` copies
    # A file written before reads back into the same results.
    again = EvalRun(
        STSResult.from_dict(BOTH_WITH_BASE),
        RetrievalResult.from_dict(BOTH_WITH_BASE["retrieval"]),
    )
    assert again == run and again.to_dict() == BOTH_WITH_BASE


def test_eval_json_of_nothing_scored():
    assert EvalRun().to_dict() == {} and EvalRun().to_markdown() == ""
