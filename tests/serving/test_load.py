"""A fast version of ``bench/bench_server.py --mode load`` on the tiny model."""

import numpy as np
import pytest
from loopback import running

from lmembed import Embedder
from lmembed.serving import ServerConfig, create_app
from lmembed.serving.loadtest import (
    LoadRequest,
    Outcome,
    check_load,
    encode_reference,
    make_requests,
    run_load,
    summarize,
)

POOL = [f"{who} {what} in the park ." for who in ("a man", "the dog", "two children")
        for what in ("is running", "sits", "plays music", "eats lunch")]  # fmt: skip


@pytest.fixture(scope="module")
def embedder(tiny_llama) -> Embedder:
    return Embedder.from_pretrained(
        str(tiny_llama), prompt="{s} is: ", query_prompt="query: {s}", max_length=64, dtype="fp32"
    )


def test_mixed_load_has_no_5xx_and_every_good_answer_is_right(embedder):
    config = ServerConfig(max_chars=500, api_keys=["k"])
    requests = make_requests(POOL, 120, bad_fraction=0.1, max_chars=config.max_chars, seed=1)
    assert sum(r.kind != "good" for r in requests) == 12
    with running(create_app(embedder, config)) as base:
        outcomes, wall_s = run_load(base, requests, concurrency=16, api_key="k")
    assert check_load(outcomes, encode_reference(embedder, requests)) == []
    summary = summarize(outcomes, wall_s)
    assert summary["server_errors"] == 0 and summary["requests"] == 120
    assert summary["by_kind"]["lone surrogate"] == {400: 2}
    assert summary["statuses"][200] == 108 + summary["by_kind"]["empty string"][200]


def test_check_load_catches_wrong_vectors_and_statuses(embedder):
    """The checker itself: a wrong vector, a 5xx and a wrong 4xx are all reported."""
    good = LoadRequest("good", {"input": ["a man sits"]}, 200)
    reference = encode_reference(embedder, [good])
    right = reference(good.texts, None)
    payload = {"data": [{"embedding": right[0].tolist()}]}
    wrong = {"data": [{"embedding": (right[0] * -1).tolist()}]}
    outcomes = [
        Outcome(good, 200, 0.01, payload),
        Outcome(good, 200, 0.01, wrong),
        Outcome(good, 500, 0.01, {"error": {}}),
        Outcome(LoadRequest("oversize", {"input": "x"}, 400), 413, 0.01, {"error": {}}),
    ]
    problems = check_load(outcomes, reference)
    assert [p.split(":")[0] for p in problems] == [
        "request 1 (good)", "request 2 (good)", "request 3 (oversize)"
    ]  # fmt: skip
    assert np.isclose(np.linalg.norm(right), 1)
