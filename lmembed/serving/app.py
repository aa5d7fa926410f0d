"""OpenAI-compatible embeddings server: ``POST /v1/embeddings``, ``GET /v1/models``,
``/health`` and Prometheus ``/metrics``.

Requests are authenticated (``auth.py``), parsed and checked (``protocol.py``), then
queued on a ``MicroBatcher`` whose one worker thread runs the model; ``middleware.py``
wraps every request (request id, metrics, access log, drain, faults). Statuses:

* 401: API keys are configured and the request lacks one of them (``/health`` is open,
  ``/metrics`` too unless ``--metrics key``);
* 413: body over ``max_request_bytes``; 400: any other invalid request, and a text the
  model cannot encode (only its own request fails; the error names its index);
* 429 with ``Retry-After``: more than ``max_queue`` texts waiting (overload);
* 503 with ``Retry-After``: shutting down (after SIGTERM) or not started;
* 504: the request's texts were not encoded within ``request_timeout_s`` (queued ones
  leave the queue unencoded);
* 500: a server fault (the model fails on every text, the worker crashed), logged;
  never a request left hanging.

Every error has OpenAI's body (``{"error": {"message", "type", "param", "code"}}``),
404 and 405 included. Vectors are unit length unless ``normalize`` is off. Texts over
the model's ``max_length`` tokens are truncated as ``Embedder.encode`` truncates them.
``model`` is accepted and not checked: one server serves one model, named in every
response.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at
# runtime, and ``Request`` is imported inside ``create_app`` (fastapi is optional).
import asyncio
import gc
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lmembed.model.embedder import Embedder
from lmembed.model.spec import Role
from lmembed.quantization import truncate
from lmembed.serving.auth import allowed_keys, check_bearer
from lmembed.serving.batcher import InputError, MicroBatcher, QueueFullError, UnavailableError
from lmembed.serving.config import ServerConfig
from lmembed.serving.metrics import ServerMetrics
from lmembed.serving.middleware import (
    Drain,
    RequestObserver,
    access_logger,
    error_headers,
    fault,
)
from lmembed.serving.passes import embedder_encode_fn
from lmembed.serving.protocol import ApiError, embedding_response, parse_request

logger = logging.getLogger("lmembed")

SERVE_EXTRA = {"fastapi": "fastapi", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client"}


def require_serve_extra() -> None:
    """Fail with the install command when the optional ``serve`` extra is missing."""
    missing = [
        pip for module, pip in SERVE_EXTRA.items() if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise ImportError(
            f"the embeddings server needs {', '.join(missing)}: pip install 'lmembed[serve]'"
        )


def served_name(config: ServerConfig, embedder: Embedder) -> str:
    """The model id in responses: ``config.name``, else the adapter folder, else the model."""
    spec = embedder.spec
    return config.name or (Path(spec.adapter).name if spec.adapter else spec.model)


def create_app(
    embedder: Embedder,
    config: ServerConfig,
    batcher: MicroBatcher | None = None,
    load_seconds: float | None = None,
):
    """The FastAPI app; the batcher's worker thread lives as long as the app runs.

    ``app.state`` holds the ``batcher``, the ``metrics`` and the ``drain`` (graceful
    shutdown, started by ``serve`` on SIGTERM). ``load_seconds``: how long the model took
    to load, for the metrics.
    """
    require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    metrics = ServerMetrics(load_seconds)
    batcher = batcher or MicroBatcher(
        embedder_encode_fn(embedder, config, metrics.observe_pass), config
    )
    metrics.track_queue(lambda: batcher.pending_inputs)
    keys = allowed_keys(config)
    name = served_name(config, embedder)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        batcher.stop()  # encodes what is still queued (nothing, after a drain) first

    app = FastAPI(title="lmembed embeddings", lifespan=lifespan)
    app.state.batcher, app.state.metrics = batcher, metrics
    app.state.drain = Drain(config.shutdown_delay_s)
    app.add_middleware(RequestObserver, metrics=metrics, drain=app.state.drain,
                       access_log=config.access_log)  # fmt: skip

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error_headers(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        body = ApiError(error.status_code, str(error.detail)).body()
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        check_bearer(request.headers.get("authorization"), keys)
        body = await _read_body(request, config.max_request_bytes)
        trained = getattr(embedder.spec, "matryoshka_dims", ())
        parsed = parse_request(body, config, embedder.dimension, trained)
        request.state.inputs = len(parsed.texts)
        vectors, counts = await _encode(batcher, parsed.texts, parsed.role, config)
        request.state.tokens = tokens = int(sum(counts))
        metrics.observe_embedded(len(parsed.texts), tokens)
        if parsed.dimensions is not None:
            vectors = truncate(vectors, parsed.dimensions, normalize=True)
        payload = embedding_response(vectors, counts, parsed.encoding_format, name)
        return Response(json.dumps(payload), media_type="application/json")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_bearer(request.headers.get("authorization"), keys)
        entry = {"id": name, "object": "model", "created": created, "owned_by": "lmembed"}
        return {"object": "list", "data": [entry]}

    @app.get("/health")
    async def health() -> JSONResponse:
        stats = batcher.stats
        body = {
            "status": "ok" if batcher.alive else "error",
            "model": name,
            "dimension": embedder.dimension,
            "normalized": config.normalize,
            "pending_inputs": batcher.pending_inputs,
            "encode_calls": stats.encode_calls,
            "requests": stats.requests,
            "inputs": stats.inputs,
            "input_errors": stats.input_errors,
            "server_errors": stats.server_errors,
        }
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    if config.metrics != "off":

        @app.get("/metrics")
        async def prometheus(request: Request) -> Response:
            if config.metrics == "key":
                check_bearer(request.headers.get("authorization"), keys)
            content, content_type = metrics.render(request.headers.get("accept"))
            return Response(content, headers={"content-type": content_type})

    return app


async def _encode(
    batcher: MicroBatcher, texts: list[str], role: Role | None, config: ServerConfig
) -> tuple[np.ndarray, list[int]]:
    """``(vectors, token counts)`` of ``texts`` from the batcher, or the ``ApiError`` that
    says why not: 429 (queue full), 503 (not running), 504 (timed out), 400 (a text the
    model rejects), 500 (a server fault, logged)."""
    try:
        future = batcher.submit(texts, role)
    except QueueFullError as error:
        raise ApiError(429, f"server busy: {error}; retry shortly", code="overloaded") from None
    except UnavailableError as error:
        raise ApiError(503, f"server unavailable: {error}", code="unavailable") from None
    try:
        # On timeout wait_for cancels the wrapper, which cancels the queued job.
        return await asyncio.wait_for(asyncio.wrap_future(future), config.request_timeout_s)
    except TimeoutError:
        message = f"not encoded within {config.request_timeout_s:g} s (--request-timeout-s)"
        raise ApiError(504, f"{message}: the server is overloaded", code="timeout") from None
    except InputError as error:
        raise ApiError(400, str(error), "input") from None
    except UnavailableError as error:
        raise ApiError(503, f"server unavailable: {error}", code="unavailable") from None
    except Exception as error:  # the model failed on every text, or the worker died
        logger.error("embeddings request failed: server fault", exc_info=error)
        raise fault(error) from None


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


def serve(load: Callable[[], Embedder], config: ServerConfig) -> None:
    """Load the model (timed, for the metrics), then serve on ``config.host:config.port``
    until SIGTERM or Ctrl-C, which drain gracefully (see ``shutdown.DrainingServer``)."""
    require_serve_extra()
    import uvicorn

    from lmembed.serving.shutdown import DrainingServer

    started = time.perf_counter()
    embedder = load()
    app = create_app(embedder, config, load_seconds=time.perf_counter() - started)
    freeze_startup_objects()
    if config.access_log:
        _access_log_to_stderr()
    uvicorn_config = uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                    access_log=False)  # fmt: skip
    DrainingServer(uvicorn_config, app.state.drain).run()


def freeze_startup_objects() -> None:
    """Move every object alive after loading (torch's, transformers', the model's: several
    hundred thousand) out of the garbage collector's reach. A full collection scans them
    all, which stalls every request in flight for hundreds of milliseconds (a loaded
    server's p99); requests create short-lived objects, which it still collects."""
    gc.collect()
    gc.freeze()


def _access_log_to_stderr() -> None:
    """Access lines as bare JSON on stderr, one a line (not through the root logger's
    ``LEVEL name:`` format), so log shippers parse them as they are."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_logger.handlers[:] = [handler]
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False
