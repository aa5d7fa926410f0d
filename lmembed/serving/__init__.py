"""The embeddings server (``lmembed serve``); FastAPI and uvicorn are imported only when used."""

from lmembed.serving.app import (
    ApiError,
    ServerConfig,
    create_app,
    embedding_response,
    parse_request,
    require_serve_extra,
    serve,
)
from lmembed.serving.batcher import MicroBatcher, QueueFullError

__all__ = [
    "ApiError",
    "MicroBatcher",
    "QueueFullError",
    "ServerConfig",
    "create_app",
    "embedding_response",
    "parse_request",
    "require_serve_extra",
    "serve",
]
