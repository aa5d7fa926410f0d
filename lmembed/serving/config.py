"""``ServerConfig``: every ``lmembed serve`` option, declared once (flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmembed.options import check_choices, option

API_KEY_ENV = "LMEMBED_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens, how it batches, what it accepts and who may call it."""

    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "TCP port to listen on")
    name: str | None = option(
        None, "model id in responses (default: the adapter folder name, else the model)"
    )
    batching: bool = option(True, "micro-batch concurrent requests into one encode call")
    batch_window_ms: float = option(
        0.0,
        "how long the worker, once free, waits for more requests to join the batch (0: it "
        "takes those already queued; requests that arrive while it encodes form the next)",
    )
    max_batch_inputs: int = option(128, "most texts in one micro-batch")
    encode_batch_size: int = option(32, "most texts in one forward pass of a micro-batch")
    max_batch_tokens: int | None = option(
        None,
        "most padded tokens (longest text x texts) in one forward pass, texts length-sorted; "
        "a text longer than this goes alone (none: only --encode-batch-size bounds a pass)",
    )
    max_inputs: int = option(512, "most texts in one request (else 400)")
    max_chars: int = option(16384, "most characters in one text (else 400)")
    max_queue: int = option(4096, "most texts waiting to be encoded (else 429, Retry-After)")
    request_timeout_s: float = option(
        60.0, "answer 504 when a request's texts are not encoded this many seconds after it "
        "was queued; texts not yet started leave the queue"
    )  # fmt: skip
    shutdown_delay_s: float = option(
        0.0, "on SIGTERM, keep the port open at least this long, answering new requests 503, "
        "so a load balancer sees the server leave (accepted requests are always answered)"
    )  # fmt: skip
    max_request_bytes: int = option(8 * 1024 * 1024, "largest request body in bytes (else 413)")
    normalize: bool = option(True, "return unit-length vectors, as OpenAI does")
    allow_any_dims: bool = option(
        False, "accept any 'dimensions' (truncate), not only the trained Matryoshka sizes"
    )
    api_keys: list[str] = option(
        [],
        f"accepted 'Authorization: Bearer' keys (repeat the flag; also ${API_KEY_ENV}, "
        "comma-separated); none: no authentication",
        repeat=True,
        flag="api-key",
    )
    metrics: Literal["open", "key", "off"] = option(
        "open", "GET /metrics (Prometheus): 'open' needs no API key (as infinity and TEI's "
        "metrics port), 'key' needs one, 'off' is not served"
    )  # fmt: skip
    access_log: bool = option(
        True, "one JSON line per request on stderr (id, status, latency, inputs, tokens)"
    )

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("batch_window_ms", "shutdown_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        limits = ("max_batch_inputs", "encode_batch_size", "max_inputs", "max_chars",
                  "max_queue", "max_request_bytes", "max_batch_tokens")  # fmt: skip
        for name in limits:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if any(not key.strip() for key in self.api_keys):
            raise ValueError("api_keys: an API key is empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
