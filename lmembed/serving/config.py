"""``ServerConfig``: every ``lmembed serve`` option, declared once (flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass

from lmembed.options import option

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
    batch_window_ms: float = option(5.0, "how long the worker collects requests into a batch")
    max_batch_inputs: int = option(128, "most texts in one micro-batch")
    encode_batch_size: int = option(32, "texts per forward pass inside one micro-batch")
    max_inputs: int = option(512, "most texts in one request (else 400)")
    max_chars: int = option(16384, "most characters in one text (else 400)")
    max_queue: int = option(4096, "most texts waiting to be encoded (else 503, Retry-After)")
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

    def __post_init__(self) -> None:
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")
        limits = ("max_batch_inputs", "encode_batch_size", "max_inputs", "max_chars",
                  "max_queue", "max_request_bytes")  # fmt: skip
        for name in limits:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(not key.strip() for key in self.api_keys):
            raise ValueError("api_keys: an API key is empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
