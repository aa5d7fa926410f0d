"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

A ``CollectorRegistry`` per app, not ``prometheus_client``'s global one: several apps in
one process (the tests, a bench) each count their own requests, and creating a second
app never fails on a duplicate metric name. Names follow Prometheus' conventions
(``_total`` counters, ``_seconds`` durations); ``batch`` means one forward pass, the
unit ``--encode-batch-size`` and ``--max-batch-tokens`` bound (as TEI's
``te_batch_next_size``/``te_batch_next_tokens``).
"""

from __future__ import annotations

from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_TEXTS_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 texts
BATCH_TOKENS_BUCKETS = tuple(float(2**i) for i in range(4, 21))  # 16 .. 1M tokens


class ServerMetrics:
    """Requests by route and status, latency, forward-pass sizes, queue depth, load time."""

    def __init__(self, load_seconds: float | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("lmembed_requests", "HTTP requests answered, by route and "
                                "status code", ["route", "status"], registry=registry)  # fmt: skip
        self.latency = Histogram(
            "lmembed_request_duration_seconds", "time from a request's arrival to its "
            "response, by route", ["route"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.texts = Counter("lmembed_embedded_texts", "texts embedded", registry=registry)
        self.tokens = Counter(
            "lmembed_embedded_tokens", "tokens the model saw (prompt and EOS included)",
            registry=registry,
        )  # fmt: skip
        self.batch_texts = Histogram(
            "lmembed_batch_texts", "texts per forward pass", buckets=BATCH_TEXTS_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "lmembed_batch_padded_tokens", "padded tokens (longest text x texts) per forward "
            "pass", buckets=BATCH_TOKENS_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue = Gauge("lmembed_queue_texts", "texts queued or being encoded",
                           registry=registry)  # fmt: skip
        if load_seconds is not None:
            load = Gauge("lmembed_model_load_seconds", "seconds the model took to load",
                         registry=registry)  # fmt: skip
            load.set(load_seconds)

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from ``depth`` at every scrape."""
        self.queue.set_function(depth)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_embedded(self, texts: int, tokens: int) -> None:
        self.texts.inc(texts)
        self.tokens.inc(tokens)

    def observe_pass(self, texts: int, padded_tokens: int) -> None:
        """One forward pass (called from the encode worker thread; metrics are thread-safe)."""
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(padded_tokens)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper's ``Accept`` header asks for (the
        Prometheus text format by default, OpenMetrics on request) and its content type."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
