"""A fast version of ``bench/bench_server.py --mode load`` on the tiny model, plus the
overload and the SIGTERM phases (the latter against a real ``python -m lmembed serve``)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import httpx
import numpy as np
import pytest
from loopback import running

from lmembed import Embedder
from lmembed.serving import ServerConfig, create_app
from lmembed.serving.loadtest import (
    LoadRequest,
    Outcome,
    accepted_latency_bound_s,
    check_load,
    check_shutdown,
    connected,
    encode_reference,
    make_requests,
    run_load,
    run_through_shutdown,
    summarize,
)

POOL = [f"{who} {what} in the park ." for who in ("a man", "the dog", "two children")
        for what in ("is running", "sits", "plays music", "eats lunch")]  # fmt: skip


SPEC = {"prompt": "{s} is: ", "query_prompt": "query: {s}", "max_length": 64, "dtype": "fp32"}


@pytest.fixture(scope="module")
def embedder(tiny_llama) -> Embedder:
    return Embedder.from_pretrained(str(tiny_llama), **SPEC)


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
    busy = [Outcome(good, 429, 0.01, {"error": {}}, retry_after="1"),
            Outcome(good, 429, 0.01, {"error": {}})]  # fmt: skip
    assert len(check_load(busy, reference)) == 2  # not overloaded: 429 is wrong
    assert check_load(busy, reference, overloaded=True) == ["request 1 (good): 429 without "
                                                           "Retry-After"]  # fmt: skip


def test_check_shutdown_catches_resets_and_runs_that_prove_nothing(embedder):
    good = LoadRequest("good", {"input": ["a man sits"]}, 200)
    reference = encode_reference(embedder, [good])
    payload = {"data": [{"embedding": reference(good.texts, None)[0].tolist()}]}
    across = Outcome(good, 200, 1.0, payload, sent_at=10.0)  # in flight at t=10.5
    refused = Outcome(good, 503, 0.01, {"error": {}}, retry_after="1", sent_at=11.0)
    gone = Outcome(good, 0, 0.01, {}, sent_at=11.0, error="ConnectError")  # port closed
    assert check_shutdown([across, refused, gone], 10.5, 2, reference) == []
    reset = Outcome(good, 0, 0.01, {}, sent_at=11.0, error="ReadError")
    assert check_shutdown([across, refused, reset], 10.5, 2, reference) == [
        "request 1 (good): no answer (ReadError)", "1 of 2 clients were never refused"
    ]  # fmt: skip
    assert check_shutdown([across, refused], 12.0, 1, reference) == [
        "no request was in flight at the signal"
    ]


def test_a_time_bounded_load_sends_a_prefix_of_the_requests_within_the_bound(embedder):
    """``seconds``: requests stop being sent once the time is up (12,000 requests from 4
    clients take seconds); the ones sent are the first ones, in order, and every one of
    them is answered right."""
    requests = [LoadRequest("good", {"input": [text]}, 200) for text in POOL * 1000]
    with running(create_app(embedder, ServerConfig())) as base:
        outcomes, _ = run_load(base, requests, concurrency=4, seconds=0.5)
    assert 0 < len(outcomes) < len(requests)
    assert [o.request for o in outcomes] == requests[: len(outcomes)]
    sent = [o.sent_at for o in outcomes]
    assert max(sent) - min(sent) <= 0.5
    assert check_load(outcomes, encode_reference(embedder, requests)) == []


def test_clients_connect_before_the_clock_and_leave_a_dead_server_to_the_round():
    """``run_load`` opens each client's connection before it starts timing (an accept
    burst inside a short round was most of its p99); a server that refuses is reported
    by the round's own requests, not by this."""
    paths = []

    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200)

    client = httpx.Client(base_url="http://server", transport=httpx.MockTransport(answer))
    assert connected(client) is client and paths == ["/health"]

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    connected(httpx.Client(base_url="http://server", transport=httpx.MockTransport(refuse)))


def _round_trip_s(base: str, body: dict, statistic=max, times: int = 5) -> float:
    """``statistic`` of ``times`` round trips of ``body`` on the idle server (after one
    to warm up)."""
    seconds = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(times + 1):
            started = time.perf_counter()
            client.post("/v1/embeddings", json=body)
            seconds.append(time.perf_counter() - started)
    return statistic(seconds[1:])


def test_overload_answers_only_200_400_429_with_bounded_accepted_latency(embedder):
    """Three times more clients than the queue holds texts, backing off on 429 as the
    OpenAI SDK does: every request is answered 200, 400 or 429 (with Retry-After), the
    200s carry the right vectors, and no accepted request takes longer than the queue
    bounds allow (``accepted_latency_bound_s``, from the config and two round trips
    measured on the idle server)."""
    config = ServerConfig(max_chars=500, max_queue=16, max_batch_inputs=16)
    clients = 3 * config.max_queue
    requests = make_requests(POOL, 300, bad_fraction=0.1, max_chars=config.max_chars, seed=2)
    full = sorted(POOL * 2, key=len, reverse=True)[: config.max_batch_inputs]
    with running(create_app(embedder, config)) as base:
        call_s = _round_trip_s(base, {"input": full})  # one full micro-batch
        # What one request costs the saturated server without the model: a burst of 400s.
        _, burst_s = run_load(base, [LoadRequest("bad", {"input": []}, 400)] * 2 * clients, clients)
        http_s = burst_s / (2 * clients)
        outcomes, wall_s = run_load(base, requests, clients, back_off=True)
    assert check_load(outcomes, encode_reference(embedder, requests), overloaded=True) == []
    summary = summarize(outcomes, wall_s)
    assert set(summary["statuses"]) <= {200, 400, 429} and summary["server_errors"] == 0
    assert summary["statuses"].get(429, 0) > 0, "the queue never filled: no overload"
    assert summary["statuses"].get(200, 0) > 0
    bound_ms = 1000 * accepted_latency_bound_s(config, call_s, http_s, clients)
    assert summary["accepted_p99_ms"] <= bound_ms, (summary, bound_ms)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            pytest.fail(f"server did not start: {log.read().decode()[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow  # a few seconds of load; starting the server process (torch) takes longer
def test_sigterm_mid_load_answers_every_accepted_request_and_exits_0(
    tiny_llama, embedder, tmp_path
):
    """``python -m lmembed serve`` gets SIGTERM while 8 clients keep sending: requests in
    flight are answered 200 (right vectors), new ones 503 (the server keeps its port
    open ``--shutdown-delay-s``), no connection is reset, the process exits 0, and its
    access log has exactly the 200s the clients received."""
    clients, url = 8, None
    port = _free_port()
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in SPEC.items()]
    command = [sys.executable, "-m", "lmembed", "serve", "--model", str(tiny_llama), *flags,
               "--port", str(port), "--batch-window-ms=50", "--shutdown-delay-s=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with (tmp_path / "server.log").open("w+b") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, process, log)
            stop = lambda: process.send_signal(signal.SIGTERM)  # noqa: E731
            outcomes, signalled_at = run_through_shutdown(url, POOL, clients, stop, after=40)
            code = process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        log.seek(0)
        text = log.read().decode()
    assert code == 0, text[-3000:]
    reference = encode_reference(embedder, [outcome.request for outcome in outcomes])
    assert check_shutdown(outcomes, signalled_at, clients, reference) == []
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    served = Counter(line["status"] for line in lines if line["path"] == "/v1/embeddings")
    received = Counter(outcome.status for outcome in outcomes)
    assert set(served) <= {200, 503} and served[200] == received[200] > 40
