"""The embeddings server (``lmembed serve``); FastAPI, uvicorn and prometheus-client are
imported only when used."""

from lmembed.serving.app import create_app, require_serve_extra, serve
from lmembed.serving.auth import allowed_keys, check_bearer
from lmembed.serving.batcher import (
    InputError,
    MicroBatcher,
    QueueFullError,
    UnavailableError,
    WorkerError,
)
from lmembed.serving.config import ServerConfig
from lmembed.serving.passes import embedder_encode_fn, token_budget_chunks
from lmembed.serving.protocol import ApiError, EmbeddingRequest, embedding_response, parse_request

__all__ = [
    "ApiError",
    "EmbeddingRequest",
    "InputError",
    "MicroBatcher",
    "QueueFullError",
    "ServerConfig",
    "UnavailableError",
    "WorkerError",
    "allowed_keys",
    "check_bearer",
    "create_app",
    "embedder_encode_fn",
    "embedding_response",
    "parse_request",
    "require_serve_extra",
    "serve",
    "token_budget_chunks",
]
