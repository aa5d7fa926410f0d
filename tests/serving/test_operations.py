"""Running the server in production: metrics, access log, timeouts, token budgets, drain."""

import gc
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from loopback import running, serving, wait_for
from prometheus_client.parser import text_string_to_metric_families

from lmembed import Embedder
from lmembed.quantization import unit_rows
from lmembed.serving import MicroBatcher, ServerConfig, create_app, token_budget_chunks
from lmembed.serving.app import freeze_startup_objects
from lmembed.serving.passes import embedder_encode_fn
from lmembed.serving.shutdown import DrainingServer

TEXTS = ["A man is playing a guitar.", "Two dogs run on the beach.", "", "x y z " * 20]


@pytest.fixture(scope="module")
def embedder(tiny_llama) -> Embedder:
    return Embedder.from_pretrained(
        str(tiny_llama), prompt="{s} is: ", query_prompt="query: {s}", max_length=64, dtype="fp32"
    )


class Gated:
    """An encode function that waits for ``gate`` (so requests stay queued) and logs calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def __call__(self, texts, role):
        self.gate.wait(30)
        self.calls.append(list(texts))
        return np.ones((len(texts), 4), dtype=np.float32), [2] * len(texts)


def _post(base: str, body, **headers) -> httpx.Response:
    return httpx.post(f"{base}/v1/embeddings", json=body, headers=headers, timeout=30)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _requests(samples, route: str, status: int) -> float:
    key = ("lmembed_requests_total", (("route", route), ("status", str(status))))
    return samples.get(key, 0.0)


def test_metrics_parse_and_move_with_requests(embedder):
    config = ServerConfig(api_keys=["secret"])
    texts = [t for t in TEXTS if t]
    with running(create_app(embedder, config, load_seconds=1.5)) as base:
        before = _samples(httpx.get(f"{base}/metrics").text)  # open: no key needed
        auth = {"authorization": "Bearer secret"}
        assert all(_post(base, {"input": t}, **auth).status_code == 200 for t in texts)
        assert _post(base, {"input": []}, **auth).status_code == 400
        assert _post(base, {"input": "a"}).status_code == 401
        assert httpx.get(f"{base}/nowhere/{time.time()}").status_code == 404
        response = httpx.get(f"{base}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)
    route = "/v1/embeddings"
    assert _requests(after, route, 200) - _requests(before, route, 200) == len(texts)
    assert _requests(after, route, 400) == 1 and _requests(after, route, 401) == 1
    assert _requests(after, "unmatched", 404) == 1  # not one label per probed path
    count = ("lmembed_request_duration_seconds_count", (("route", route),))
    assert after[count] - before.get(count, 0) == len(texts) + 2
    assert after[("lmembed_embedded_texts_total", ())] == len(texts)
    tokens = sum(len(ids) for ids in embedder.tokenize(texts))
    assert after[("lmembed_embedded_tokens_total", ())] == tokens
    # Each text came alone: one pass of one text, padded to its own length.
    assert after[("lmembed_batch_texts_count", ())] == len(texts)
    assert after[("lmembed_batch_texts_sum", ())] == len(texts)
    assert after[("lmembed_batch_padded_tokens_sum", ())] == tokens
    assert after[("lmembed_queue_texts", ())] == 0
    assert after[("lmembed_model_load_seconds", ())] == 1.5


def test_two_apps_in_one_process_count_separately(embedder):
    one_app, two_app = create_app(embedder, ServerConfig()), create_app(embedder, ServerConfig())
    with running(one_app) as one, running(two_app) as two:
        assert _post(one, {"input": "a"}).status_code == 200
        first, second = (_samples(httpx.get(f"{b}/metrics").text) for b in (one, two))
    assert _requests(first, "/v1/embeddings", 200) == 1
    assert _requests(second, "/v1/embeddings", 200) == 0


def test_metrics_behind_the_key_or_off(embedder):
    with running(create_app(embedder, ServerConfig(api_keys=["k"], metrics="key"))) as base:
        assert httpx.get(f"{base}/metrics").status_code == 401
        keyed = httpx.get(f"{base}/metrics", headers={"authorization": "Bearer k"})
        assert keyed.status_code == 200 and "lmembed_requests_total" in keyed.text
    with running(create_app(embedder, ServerConfig(metrics="off"))) as base:
        assert httpx.get(f"{base}/metrics").status_code == 404


def test_queue_gauge_counts_waiting_texts(embedder):
    gated = Gated()
    config = ServerConfig(batching=False)
    with running(create_app(embedder, config, batcher=MicroBatcher(gated, config))) as base:
        with ThreadPoolExecutor(2) as pool:
            answers = [
                pool.submit(_post, base, {"input": ["a", "b", "c"][: n + 1]}) for n in (0, 2)
            ]
            wait_for(lambda: _samples(httpx.get(f"{base}/metrics").text).get(
                ("lmembed_queue_texts", ())) == 4)  # fmt: skip
            gated.gate.set()
            assert [a.result().status_code for a in answers] == [200, 200]
        assert _samples(httpx.get(f"{base}/metrics").text)[("lmembed_queue_texts", ())] == 0


def test_access_log_is_one_json_line_per_request_without_keys(embedder, caplog):
    config = ServerConfig(api_keys=["very-secret-key"])
    with (
        caplog.at_level("INFO", logger="lmembed.access"),
        running(create_app(embedder, config)) as base,
    ):
        auth = {"authorization": "Bearer very-secret-key"}
        good = _post(base, {"input": TEXTS[:2]}, **auth, **{"x-request-id": "trace-42"})
        bad = _post(base, {"input": []}, **auth, **{"x-request-id": "no\ttabs please"})
        denied = _post(base, {"input": "a"}, authorization="Bearer wrong-key")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lmembed.access"]
    assert [line["status"] for line in lines] == [200, 400, 401]
    first = lines[0]
    assert set(first) == {"time", "request_id", "method", "path", "status", "latency_ms",
                          "inputs", "tokens", "client"}  # fmt: skip
    assert first["request_id"] == good.headers["x-request-id"] == "trace-42"
    assert first["method"] == "POST" and first["path"] == "/v1/embeddings"
    assert first["inputs"] == 2 and first["tokens"] == good.json()["usage"]["total_tokens"]
    assert first["client"] == "127.0.0.1" and first["latency_ms"] > 0
    assert first["time"].endswith("+00:00")
    # A request id that is not a short token is replaced (it goes into log lines).
    assert lines[1]["request_id"] == bad.headers["x-request-id"] != "no\ttabs please"
    assert lines[1]["inputs"] is None and lines[2]["request_id"] == denied.headers["x-request-id"]
    assert "secret-key" not in caplog.text and "wrong-key" not in caplog.text


def test_no_access_log_when_off(embedder, caplog):
    app = create_app(embedder, ServerConfig(access_log=False))
    with caplog.at_level("INFO", logger="lmembed.access"), running(app) as base:
        assert _post(base, {"input": "a"}).status_code == 200
    assert not [r for r in caplog.records if r.name == "lmembed.access"]


def test_a_request_past_its_timeout_is_504_and_leaves_the_queue(embedder):
    """The worker is busy on a request: one queued behind it times out (504), its texts
    leave the queue at once (a new request fits) and are never encoded."""
    gated = Gated()
    config = ServerConfig(batching=False, max_queue=3, request_timeout_s=0.5)
    batcher = MicroBatcher(gated, config)
    with (
        running(create_app(embedder, config, batcher=batcher)) as base,
        ThreadPoolExecutor(2) as pool,
    ):
        running_one = pool.submit(_post, base, {"input": "first"})
        wait_for(lambda: batcher.pending_inputs == 1)
        started = time.monotonic()
        late = _post(base, {"input": ["second", "third"]})
        waited = time.monotonic() - started
        assert batcher.pending_inputs == 1  # "first" is still being encoded
        after = pool.submit(_post, base, {"input": ["fourth", "fifth"]})
        wait_for(lambda: batcher.pending_inputs == 3)
        gated.gate.set()
        assert after.result().status_code == 200
        timed_out_while_running = running_one.result()
    assert late.status_code == 504 and 0.5 <= waited < 5
    error = late.json()["error"]
    assert error["code"] == "timeout" and "--request-timeout-s" in error["message"]
    assert timed_out_while_running.status_code == 504  # answered at its deadline too
    assert ["second", "third"] not in gated.calls and ["fourth", "fifth"] in gated.calls


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 80), max_size=40),
    budget=st.integers(1, 400),
    rows=st.integers(1, 16),
)
def test_token_budget_chunks_hold_the_budget(lengths, budget, rows):
    ids = [[7] * n for n in lengths]
    chunks = token_budget_chunks(ids, budget, rows)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(ids)))
    order = [len(ids[i]) for chunk in chunks for i in chunk]
    assert order == sorted(order, reverse=True)  # length-sorted: little padding
    for chunk in chunks:
        padded = len(chunk) * max(len(ids[i]) for i in chunk)
        assert len(chunk) <= rows
        assert padded <= budget or len(chunk) == 1  # an over-budget text goes alone
    # Greedy fill: a pass is only closed when the next text would break a bound.
    for chunk in chunks[:-1]:
        longest = len(ids[chunk[0]])
        assert len(chunk) == rows or longest * (len(chunk) + 1) > budget


def test_max_batch_tokens_gives_the_same_vectors_in_bounded_passes(embedder):
    texts = [f"{'word ' * (i * 3 % 17)}number {i}" for i in range(24)]
    reference = unit_rows(embedder.encode(texts))
    lengths = [len(ids) for ids in embedder.tokenize(texts)]
    budget = 3 * max(lengths) // 2  # room for one longest text, or several short ones
    passes: list[tuple[int, int]] = []
    config = ServerConfig(max_batch_tokens=budget)
    vectors, counts = embedder_encode_fn(embedder, config, lambda *p: passes.append(p))(texts, None)
    np.testing.assert_allclose(vectors, reference, rtol=1e-4, atol=1e-5)
    assert counts == lengths
    assert sum(texts_in_pass for texts_in_pass, _ in passes) == len(texts)
    assert all(padded <= budget for _, padded in passes) and len(passes) > 1
    # Over HTTP, with a budget smaller than one text: every text alone, same vectors.
    with running(create_app(embedder, ServerConfig(max_batch_tokens=2))) as base:
        rows = [d["embedding"] for d in _post(base, {"input": texts}).json()["data"]]
        metrics = _samples(httpx.get(f"{base}/metrics").text)
    np.testing.assert_allclose(np.array(rows), reference, rtol=1e-4, atol=1e-5)
    assert metrics[("lmembed_batch_texts_count", ())] == len(texts)


def test_draining_server_answers_accepted_requests_and_refuses_new_ones(embedder):
    """SIGTERM's handler, called directly (signals reach only the main thread): the
    queued request is answered 200, new ones get 503 with ``Connection: close``,
    ``/metrics`` stays readable, and the server stops once nothing is left."""
    gated = Gated()
    config = ServerConfig()
    app = create_app(embedder, config, batcher=MicroBatcher(gated, config))
    server = DrainingServer(uvicorn.Config(app, log_level="warning"), app.state.drain)
    with serving(server) as base, ThreadPoolExecutor(1) as pool:
        accepted = pool.submit(_post, base, {"input": ["a", "b"]})
        wait_for(lambda: app.state.batcher.pending_inputs == 2)
        server.handle_exit(signal.SIGTERM, None)
        refused = _post(base, {"input": "c"})
        health = httpx.get(f"{base}/health")
        metrics = httpx.get(f"{base}/metrics")
        assert not server.should_exit  # still draining: the accepted request runs
        gated.gate.set()
        answered = accepted.result()
        wait_for(lambda: server.should_exit)
    assert answered.status_code == 200 and answered.headers["connection"] == "close"
    assert refused.status_code == 503 and refused.headers["connection"] == "close"
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "shutting_down"
    assert health.status_code == 503 and metrics.status_code == 200
    assert gated.calls == [["a", "b"]]


def test_objects_alive_at_startup_leave_the_collectors_reach():
    """``serve`` freezes what loading left (a full collection would scan it while requests
    wait); objects made later are still collected."""
    before = gc.get_freeze_count()
    loaded = [[] for _ in range(1000)]  # containers: what the collector tracks
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() >= before + len(loaded)
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # a cycle made after startup is found and freed
    finally:
        gc.unfreeze()
