"""A bounded loopback load test: good and bad requests mixed, every answer checked.

``make_requests`` builds a reproducible mix: good requests (1-3 texts, each role) and,
at ``bad_fraction``, requests that must fail alone with a 400 (lone surrogates, an
empty list, oversize texts, wrong types, an unknown ``input_type``) plus empty strings
(valid: they embed the prompt and EOS). ``run_load`` sends them from many threads;
``check_load`` lists every answer that differs from what was expected: any 5xx, a
wrong status, or a vector that differs from ``Embedder.encode`` (normalised). Used by
``python -m bench.bench_server --mode load`` and the serving tests.

Two more phases:

* **overload**: more clients than ``max_queue`` holds. ``check_load(...,
  overloaded=True)`` then also accepts a 429 with ``Retry-After`` for a request that
  expected vectors, and nothing else; ``accepted_latency_bound_s`` is how long an
  accepted request can take at most, from the queue bounds and the time of one encode
  call (``summarize``'s ``accepted_p99_ms`` must stay under it);
* **shutdown**: ``run_through_shutdown`` keeps clients sending until the server
  refuses them, stopping it (SIGTERM) midway; ``check_shutdown`` wants every answer a
  200 (right vectors) or a 503, no connection lost but a refused one, and requests in
  flight at the signal answered 200.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmembed.model.spec import Role
from lmembed.serving.config import ServerConfig

ROLES: tuple[Role | None, ...] = (None, "query", "document")
Reference = Callable[[list[str], Role | None], np.ndarray]


@dataclass(frozen=True)
class LoadRequest:
    """One request to send: its JSON body, its kind, and the status it must get."""

    kind: str
    body: dict[str, Any]
    status: int

    @property
    def texts(self) -> list[str]:
        value = self.body["input"]
        return [value] if isinstance(value, str) else value

    @property
    def role(self) -> Role | None:
        return self.body.get("input_type")


@dataclass(frozen=True)
class Outcome:
    """One answer; ``status`` 0 and ``error`` (the exception's name) when none came."""

    request: LoadRequest
    status: int
    seconds: float
    payload: dict[str, Any]
    retry_after: str | None = None
    sent_at: float = 0.0  # time.perf_counter() when the request was sent
    error: str | None = None


def make_requests(
    pool: list[str], count: int, bad_fraction: float, max_chars: int, seed: int = 0
) -> list[LoadRequest]:
    """``count`` requests over ``pool`` texts, ``bad_fraction`` of them bad or edge cases."""
    rng = random.Random(seed)
    bad = round(count * bad_fraction)
    kinds = _bad_kinds(max_chars)
    requests = [_good(rng, pool) for _ in range(count - bad)]
    requests += [kinds[i % len(kinds)](rng, pool) for i in range(bad)]
    rng.shuffle(requests)
    return requests


def _good(rng: random.Random, pool: list[str]) -> LoadRequest:
    body = {"model": "load", "input": rng.sample(pool, rng.randint(1, 3))}
    role = rng.choice(ROLES)
    return LoadRequest("good", body if role is None else {**body, "input_type": role}, 200)


def _bad_kinds(max_chars: int) -> list[Callable[[random.Random, list[str]], LoadRequest]]:
    def make(kind: str, status: int, value: Callable[[random.Random, list[str]], Any], **extra):
        return lambda rng, pool: LoadRequest(kind, {"input": value(rng, pool), **extra}, status)

    return [
        make("lone surrogate", 400, lambda r, p: [r.choice(p), "a\ud800b"]),
        make("empty string", 200, lambda r, p: ""),
        make("empty list", 400, lambda r, p: []),
        make("oversize", 400, lambda r, p: [r.choice(p), "x" * (max_chars + 1)]),
        make("wrong type", 400, lambda r, p: r.choice([42, [1, 2], {"a": 1}, None])),
        make("bad input_type", 400, lambda r, p: r.choice(p), input_type="q"),
    ]


def run_load(
    url: str,
    requests: list[LoadRequest],
    concurrency: int,
    api_key: str | None = None,
    back_off: bool = False,
    seconds: float | None = None,
) -> tuple[list[Outcome], float]:
    """Send every request from ``concurrency`` threads; the outcomes and the wall time.

    ``back_off``: after a 429 a client waits ``Retry-After`` seconds before its next
    request, as the OpenAI SDK does (without it, an overload test measures mostly how
    fast the server answers 429s). ``seconds``: send no request later than this after the
    start (those sent are answered; the rest are left out of the outcomes), so a benchmark
    is bounded in time as well as in requests.
    """
    import httpx

    # Every client is built, connected and waiting before the clock starts: making a client
    # (its TLS context) costs more than a request, and threads starting or a pool being
    # filled while the first requests are in flight would show up as their latency.
    clients = [connected(httpx.Client(base_url=url, timeout=120)) for _ in range(concurrency)]
    outcomes: list[Outcome | None] = [None] * len(requests)
    numbers = itertools.count()  # the next request to send, shared by the clients
    ready = threading.Barrier(concurrency + 1)

    failures: list[BaseException] = []

    def client_loop(client) -> None:
        ready.wait()
        try:
            # The clock is read before a number is drawn, so the requests sent are a prefix.
            while time.perf_counter() <= deadline and (number := next(numbers)) < len(requests):
                outcomes[number] = outcome = _send(client, requests[number], api_key)
                if back_off and outcome.status == 429 and outcome.retry_after is not None:
                    time.sleep(float(outcome.retry_after))
        except BaseException as error:  # re-raised by the caller's thread, as map() would
            failures.append(error)

    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else math.inf
    ready.wait()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    for client in clients:
        client.close()
    if failures:
        raise failures[0]
    return [outcome for outcome in outcomes if outcome is not None], wall_s


def connected(client):
    """``client`` with its connection open: a client in steady use holds one, and opening
    them all inside the measured time would put the server's accept burst into the first
    requests' latency (the p99 of a short round)."""
    import httpx

    with contextlib.suppress(httpx.HTTPError):  # the round's own requests report it
        client.get("/health")
    return client


def _send(client, request: LoadRequest, api_key: str | None) -> Outcome:
    """POST one request; a connection that fails is an outcome too (status 0)."""
    import httpx

    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    content = json.dumps(request.body).encode()  # ASCII escapes: lone surrogates survive
    sent_at = time.perf_counter()
    try:
        response = client.post("/v1/embeddings", content=content, headers=headers)
    except httpx.TransportError as error:
        seconds = time.perf_counter() - sent_at
        return Outcome(request, 0, seconds, {}, sent_at=sent_at, error=type(error).__name__)
    seconds = time.perf_counter() - sent_at
    retry_after = response.headers.get("retry-after")
    return Outcome(request, response.status_code, seconds, response.json(), retry_after, sent_at)


def check_load(
    outcomes: list[Outcome],
    reference: Reference,
    tolerance: float = 1e-5,
    overloaded: bool = False,
) -> list[str]:
    """Every way an answer differs from what was expected (empty: all correct).

    ``overloaded``: a 429 with ``Retry-After`` may stand in for a 200 (the queue was full).
    """
    problems = []
    for number, outcome in enumerate(outcomes):
        request = outcome.request
        where = f"request {number} ({request.kind})"
        busy = overloaded and request.status == 200 and outcome.status == 429
        if busy and outcome.retry_after is None:
            problems.append(f"{where}: 429 without Retry-After")
        elif outcome.error is not None:
            problems.append(f"{where}: no answer ({outcome.error})")
        elif outcome.status != request.status and not busy:
            problems.append(f"{where}: status {outcome.status}, expected {request.status}: "
                            f"{json.dumps(outcome.payload)[:200]}")  # fmt: skip
        elif outcome.status == 200:
            rows = np.array([d["embedding"] for d in outcome.payload["data"]], dtype=np.float32)
            expected = reference(request.texts, request.role)
            close = rows.shape == expected.shape and np.allclose(
                rows, expected, rtol=10 * tolerance, atol=tolerance
            )
            if not close:
                problems.append(f"{where}: vectors differ from encode()")
        elif "error" not in outcome.payload:
            problems.append(f"{where}: status {outcome.status} without an error body")
    return problems


def summarize(outcomes: list[Outcome], wall_s: float) -> dict[str, Any]:
    """Requests/s, latency percentiles (all answers, and the 200s alone: under overload
    the fast 429s would hide how long accepted requests take) and status counts
    (overall and per request kind)."""
    latencies = sorted(outcome.seconds for outcome in outcomes)
    accepted = sorted(outcome.seconds for outcome in outcomes if outcome.status == 200)
    by_kind: dict[str, Counter] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.request.kind, Counter())[outcome.status] += 1
    return {
        "requests": len(outcomes),
        "requests_per_s": len(outcomes) / wall_s,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * _p99(latencies),
        "accepted_p99_ms": 1000 * _p99(accepted) if accepted else None,
        "statuses": dict(sorted(Counter(outcome.status for outcome in outcomes).items())),
        "by_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
        "server_errors": sum(outcome.status >= 500 for outcome in outcomes),
    }


def _p99(sorted_values: list[float]) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(0.99 * len(sorted_values)))]


def accepted_latency_bound_s(
    config: ServerConfig, call_s: float, http_s: float, clients: int
) -> float:
    """The longest a request the queue accepted can take, from the server's bounds.

    At admission at most ``max_queue`` texts are unanswered, its own and those of the
    micro-batch being encoded included. The worker takes queued texts in order, at most
    ``max_batch_inputs`` a micro-batch, so the request is answered by the end of the
    micro-batch in progress plus ``ceil(max_queue / max_batch_inputs)`` more; each is one
    encode call per role (at most three) after at most one batch window. Its answer
    also waits for the event loop to handle the other clients' requests, each client
    having one in flight, and an accepted request takes two turns of the loop (read and
    queued; answered once encoded) where a refused one takes one. ``call_s``: one encode
    call of a full micro-batch through HTTP; ``http_s``: one request answered without the
    model (both measured on the idle server, so they include the HTTP stack and the
    client).
    """
    batches = 1 + math.ceil(config.max_queue / config.max_batch_inputs)
    queue_s = batches * (len(ROLES) * call_s + config.batch_window_ms / 1000)
    return queue_s + 2 * clients * http_s


def run_through_shutdown(
    url: str,
    pool: list[str],
    concurrency: int,
    stop_server: Callable[[], None],
    after: int,
    api_key: str | None = None,
    seconds: float = 120.0,
) -> tuple[list[Outcome], float]:
    """Good requests from ``concurrency`` clients, each sending until the server refuses
    it (a 503, or a refused connection once the port is closed); ``stop_server`` (send
    SIGTERM) runs once ``after`` answers came back. The outcomes in the order they
    finished, and when ``stop_server`` ran (``time.perf_counter``). ``seconds`` bounds
    the whole run: a server that never refuses does not hang the caller."""
    import httpx

    outcomes: list[Outcome] = []
    answered = threading.Condition()
    deadline = time.perf_counter() + seconds

    def client(number: int) -> None:
        rng = random.Random(number)
        with httpx.Client(base_url=url, timeout=seconds) as http:
            while time.perf_counter() < deadline:
                outcome = _send(http, _good(rng, pool), api_key)
                with answered:
                    outcomes.append(outcome)
                    answered.notify_all()
                if outcome.status == 503 or outcome.error == "ConnectError":
                    return

    with ThreadPoolExecutor(concurrency) as workers:
        running = [workers.submit(client, number) for number in range(concurrency)]
        with answered:
            answered.wait_for(
                lambda: len(outcomes) >= after, max(deadline - time.perf_counter(), 0)
            )
        signalled_at = time.perf_counter()
        stop_server()
        for future in running:
            future.result()
    return outcomes, signalled_at


def check_shutdown(
    outcomes: list[Outcome], signalled_at: float, clients: int, reference: Reference
) -> list[str]:
    """What went wrong across a graceful shutdown (empty: nothing): an answer other than
    a 200 with the right vectors or a 503 with ``Retry-After``, a connection lost other
    than refused, no request in flight at the signal (then the run proved nothing), a
    client the server never refused."""
    refused = [o.status == 503 or o.error == "ConnectError" for o in outcomes]
    answered = [o for o, no in zip(outcomes, refused, strict=True) if not no]
    problems = check_load(answered, reference)
    problems += [
        f"a 503 without Retry-After: {o.payload}"
        for o in outcomes
        if o.status == 503 and o.retry_after is None
    ]
    if not any(o.status == 200 and o.sent_at < signalled_at < o.sent_at + o.seconds
               for o in answered):  # fmt: skip
        problems.append("no request was in flight at the signal")
    if sum(refused) != clients:
        problems.append(f"{clients - sum(refused)} of {clients} clients were never refused")
    return problems


def encode_reference(embedder, requests: list[LoadRequest], normalize: bool = True) -> Reference:
    """``Embedder.encode`` of the texts of ``requests`` that expect vectors (one call per
    role, normalised like the server's), as a lookup for ``check_load``."""
    from lmembed.quantization import unit_rows

    table: dict[tuple[str, Role | None], np.ndarray] = {}
    wanted = [r for r in requests if r.status == 200]
    for role in dict.fromkeys(r.role for r in wanted):
        texts = list(dict.fromkeys(t for r in wanted if r.role == role for t in r.texts))
        vectors = embedder.encode(texts, role=role, show_progress=False)
        vectors = unit_rows(vectors) if normalize else vectors
        table.update({(t, role): v for t, v in zip(texts, vectors, strict=True)})

    def reference(texts: list[str], role: Role | None) -> np.ndarray:
        return np.stack([table[(t, role)] for t in texts])

    return reference
