"""OpenAI-compatible embeddings server: ``POST /v1/embeddings``, ``GET /v1/models``, ``/health``.

Requests are authenticated (``auth.py``), parsed and checked (``protocol.py``), then
queued on a ``MicroBatcher`` whose one worker thread runs the model. Statuses:

* 401: API keys are configured and the request lacks one of them (``/health`` is open);
* 413: body over ``max_request_bytes``; 400: any other invalid request, and a text the
  model cannot encode (only its own request fails; the error names its index);
* 503 with ``Retry-After``: more than ``max_queue`` texts waiting;
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
import importlib.util
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lmembed.model.embedder import Embedder
from lmembed.model.spec import Role
from lmembed.quantization import truncate, unit_rows
from lmembed.serving.auth import allowed_keys, check_bearer
from lmembed.serving.batcher import EncodeFn, InputError, MicroBatcher, QueueFullError
from lmembed.serving.config import ServerConfig
from lmembed.serving.protocol import ApiError, embedding_response, parse_request

logger = logging.getLogger("lmembed")


def embedder_encode_fn(embedder: Embedder, config: ServerConfig) -> EncodeFn:
    """``(texts, role) -> (vectors, token counts)``; counts are the tokens the model sees
    (prompt, truncation and EOS included); vectors unit length if ``config.normalize``."""

    def encode(texts: list[str], role: Role | None) -> tuple[np.ndarray, list[int]]:
        ids = embedder.tokenize(texts, role)  # once: the counts and the vectors
        vectors = embedder.encode_ids(ids, config.encode_batch_size, show_progress=False)
        counts = [len(row) for row in ids]
        return (unit_rows(vectors) if config.normalize else vectors), counts

    return encode


def require_serve_extra() -> None:
    """Fail with the install command when the optional ``serve`` extra is missing."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"the embeddings server needs {' and '.join(missing)}: pip install 'lmembed[serve]'"
        )


def served_name(config: ServerConfig, embedder: Embedder) -> str:
    """The model id in responses: ``config.name``, else the adapter folder, else the model."""
    spec = embedder.spec
    return config.name or (Path(spec.adapter).name if spec.adapter else spec.model)


def create_app(embedder: Embedder, config: ServerConfig, batcher: MicroBatcher | None = None):
    """The FastAPI app; the batcher's worker thread lives as long as the app runs."""
    require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    batcher = batcher or MicroBatcher(embedder_encode_fn(embedder, config), config)
    keys = allowed_keys(config)
    name = served_name(config, embedder)
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
        if error.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        body = ApiError(error.status_code, str(error.detail)).body()
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def server_fault(request: Request, error: Exception) -> JSONResponse:
        logger.error("internal error answering %s %s", request.method, request.url.path,
                     exc_info=error)  # fmt: skip
        return JSONResponse(_fault(error).body(), status_code=500)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        check_bearer(request.headers.get("authorization"), keys)
        body = await _read_body(request, config.max_request_bytes)
        trained = getattr(embedder.spec, "matryoshka_dims", ())
        parsed = parse_request(body, config, embedder.dimension, trained)
        try:
            future = batcher.submit(parsed.texts, parsed.role)
        except QueueFullError as error:
            raise ApiError(503, f"server busy: {error}; retry shortly") from None
        try:
            vectors, counts = await asyncio.wrap_future(future)
        except InputError as error:
            raise ApiError(400, str(error), "input") from None
        except Exception as error:  # the model failed on every text, or the worker died
            logger.error("embeddings request failed: server fault", exc_info=error)
            raise _fault(error) from None
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

    return app


def _fault(error: Exception) -> ApiError:
    """The 500 a client sees: the kind of fault, not its internals (those are logged)."""
    return ApiError(
        500, f"internal server error ({type(error).__name__}); the server log has the details"
    )


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


def serve(embedder: Embedder, config: ServerConfig) -> None:
    """Run the server on ``config.host:config.port`` until interrupted (one model copy)."""
    require_serve_extra()
    import uvicorn

    uvicorn.run(create_app(embedder, config), host=config.host, port=config.port, log_level="info")
