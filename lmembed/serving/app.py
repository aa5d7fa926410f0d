"""OpenAI-compatible embeddings server: ``POST /v1/embeddings``, ``GET /v1/models``, ``/health``.

Requests are parsed and checked here, then queued on a ``MicroBatcher`` whose one
worker thread runs the model. Every bad request gets a 4xx with OpenAI's error
shape (``{"error": {"message", "type", "param", "code"}}``), never a 500:

* body over ``max_request_bytes``: 413;
* invalid JSON, wrong types, no ``input``, token-id arrays, too many inputs,
  a text over ``max_chars`` characters, unknown ``encoding_format``, a
  ``dimensions`` other than the model's: 400;
* more than ``max_queue_inputs`` texts waiting: 503 with ``Retry-After``.

Texts within ``max_chars`` but over the model's ``max_length`` tokens are truncated
exactly as ``Embedder.encode`` truncates them (EOS kept). ``model`` is accepted
and not checked: one server serves one model, named in every response.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at
# runtime, and ``Request`` is imported inside ``create_app`` (fastapi is optional).
import asyncio
import base64
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmembed.model.embedder import Embedder
from lmembed.serving.batcher import EncodeFn, MicroBatcher, QueueFullError

ENCODING_FORMATS = ("float", "base64")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and batching options; every one is a ``lmembed serve`` flag."""

    name: str
    batch_window_ms: float = 5.0
    batching: bool = True
    max_batch_inputs: int = 128
    max_inputs: int = 512
    max_chars: int = 16384
    max_queue_inputs: int = 4096
    max_request_bytes: int = 8 * 1024 * 1024
    encode_batch_size: int = 32


class ApiError(Exception):
    """A request problem reported to the client as ``status`` with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    encoding_format: str


def parse_request(body: bytes, config: ServerConfig, dimension: int) -> EmbeddingRequest:
    """Validate an embeddings request body, raising ``ApiError(400)`` with the reason."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
        raise ApiError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object with an 'input' field")
    texts = _texts(data.get("input"), config)
    encoding_format = data.get("encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise ApiError(
            400,
            f"'encoding_format' must be 'float' or 'base64', got {encoding_format!r}",
            "encoding_format",
        )
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", "model")
    dimensions = data.get("dimensions")
    if dimensions is not None and dimensions != dimension:
        raise ApiError(
            400,
            f"'dimensions' must be {dimension} (this model's size), got {dimensions!r}",
            "dimensions",
        )
    return EmbeddingRequest(texts, encoding_format)


def _texts(value: Any, config: ServerConfig) -> list[str]:
    if value is None:
        raise ApiError(400, "'input' is required: a string or a list of strings", "input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(
            400,
            "'input' must be a string or a list of strings (token-id arrays are not "
            "supported: send text)",
            "input",
        )
    if not texts:
        raise ApiError(400, "'input' is an empty list; send at least one string", "input")
    if len(texts) > config.max_inputs:
        raise ApiError(
            400,
            f"'input' has {len(texts)} strings, over this server's limit of "
            f"{config.max_inputs}; split the request",
            "input",
        )
    for index, text in enumerate(texts):
        if len(text) > config.max_chars:
            raise ApiError(
                400,
                f"input[{index}] has {len(text)} characters, over this server's limit of "
                f"{config.max_chars} (texts over the model's token limit are truncated; this "
                "limit bounds the work one request can ask for)",
                "input",
            )
    return texts


def embedding_response(
    vectors: np.ndarray, counts: list[int], encoding_format: str, model: str
) -> dict[str, Any]:
    """OpenAI's response shape; base64 is little-endian float32, as OpenAI sends it."""
    rows = np.asarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        items = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    else:
        items = [row.tolist() for row in rows]
    tokens = int(sum(counts))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def embedder_encode_fn(embedder: Embedder, batch_size: int) -> EncodeFn:
    """``texts -> (vectors, token counts)``; counts are the tokens the model sees
    (prompt, truncation and EOS included)."""

    def encode(texts: list[str]) -> tuple[np.ndarray, list[int]]:
        counts = [len(ids) for ids in embedder.tokenize(texts)]
        return embedder.encode(texts, batch_size=batch_size, show_progress=False), counts

    return encode


def require_serve_extra() -> None:
    """Fail with the install command when the optional ``serve`` extra is missing."""
    missing = [name for name in ("fastapi", "uvicorn") if not _importable(name)]
    if missing:
        raise ImportError(
            f"the embeddings server needs {' and '.join(missing)}: pip install 'lmembed[serve]'"
        )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def create_app(embedder: Embedder, config: ServerConfig, batcher: MicroBatcher | None = None):
    """The FastAPI app; the batcher's worker thread lives as long as the app runs."""
    require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    batcher = batcher or MicroBatcher(
        embedder_encode_fn(embedder, config.encode_batch_size),
        window_ms=config.batch_window_ms,
        max_batch_inputs=config.max_batch_inputs,
        max_queue_inputs=config.max_queue_inputs,
        batching=config.batching,
    )
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="lmembed embeddings", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = await _read_body(request, config.max_request_bytes)
        parsed = parse_request(body, config, embedder.dimension)
        try:
            future = batcher.submit(parsed.texts)
        except QueueFullError as error:
            raise ApiError(503, f"server busy: {error}; retry shortly") from None
        vectors, counts = await asyncio.wrap_future(future)
        payload = embedding_response(vectors, counts, parsed.encoding_format, config.name)
        return Response(json.dumps(payload), media_type="application/json")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": config.name, "object": "model", "created": created, "owned_by": "lmembed"}
        return {"object": "list", "data": [entry]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = batcher.stats
        return {
            "status": "ok",
            "model": config.name,
            "dimension": embedder.dimension,
            "pending_inputs": batcher.pending_inputs,
            "encode_calls": stats.encode_calls,
            "requests": stats.requests,
            "inputs": stats.inputs,
        }

    return app


async def _read_body(request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def serve(embedder: Embedder, config: ServerConfig, host: str = "127.0.0.1", port: int = 8000):
    """Run the server in this process until interrupted (one process: one model copy)."""
    require_serve_extra()
    import uvicorn

    uvicorn.run(create_app(embedder, config), host=host, port=port, log_level="info")
