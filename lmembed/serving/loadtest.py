"""A bounded loopback load test: good and bad requests mixed, every answer checked.

``make_requests`` builds a reproducible mix: good requests (1-3 texts, each role) and,
at ``bad_fraction``, requests that must fail alone with a 400 (lone surrogates, an
empty list, oversize texts, wrong types, an unknown ``input_type``) plus empty strings
(valid: they embed the prompt and EOS). ``run_load`` sends them from many threads;
``check_load`` lists every answer that differs from what was expected: any 5xx, a
wrong status, or a vector that differs from ``Embedder.encode`` (normalised). Used by
``python -m bench.bench_server --mode load`` and the serving tests.
"""

from __future__ import annotations

import json
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
    request: LoadRequest
    status: int
    seconds: float
    payload: dict[str, Any]


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
    role = rng.choice([None, "query", "document"])
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
    url: str, requests: list[LoadRequest], concurrency: int, api_key: str | None = None
) -> tuple[list[Outcome], float]:
    """Send every request from ``concurrency`` threads; the outcomes and the wall time."""
    import httpx

    local = threading.local()
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"

    def send(request: LoadRequest) -> Outcome:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        content = json.dumps(request.body).encode()  # ASCII escapes: lone surrogates survive
        started = time.perf_counter()
        response = local.client.post("/v1/embeddings", content=content, headers=headers)
        seconds = time.perf_counter() - started
        return Outcome(request, response.status_code, seconds, response.json())

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as workers:
        outcomes = list(workers.map(send, requests))
    return outcomes, time.perf_counter() - started


def check_load(outcomes: list[Outcome], reference: Reference, tolerance: float = 1e-5) -> list[str]:
    """Every way an answer differs from what was expected (empty: all correct)."""
    problems = []
    for number, outcome in enumerate(outcomes):
        request = outcome.request
        where = f"request {number} ({request.kind})"
        if outcome.status != request.status:
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
    """Requests/s, latency percentiles and status counts (overall and per request kind)."""
    latencies = sorted(outcome.seconds for outcome in outcomes)
    by_kind: dict[str, Counter] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.request.kind, Counter())[outcome.status] += 1
    return {
        "requests": len(outcomes),
        "requests_per_s": len(outcomes) / wall_s,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * len(latencies)))],
        "statuses": dict(sorted(Counter(outcome.status for outcome in outcomes).items())),
        "by_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
        "server_errors": sum(outcome.status >= 500 for outcome in outcomes),
    }


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
