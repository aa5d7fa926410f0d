"""The embeddings server (``lmembed serve``); FastAPI and uvicorn are imported only when used."""

from lmembed.serving.app import create_app, embedder_encode_fn, require_serve_extra, serve
from lmembed.serving.auth import allowed_keys, check_bearer
from lmembed.serving.batcher import InputError, MicroBatcher, QueueFullError, WorkerError
from lmembed.serving.config import ServerConfig
from lmembed.serving.protocol import ApiError, EmbeddingRequest, embedding_response, parse_request

__all__ = [
    "ApiError",
    "EmbeddingRequest",
    "InputError",
    "MicroBatcher",
    "QueueFullError",
    "ServerConfig",
    "WorkerError",
    "allowed_keys",
    "check_bearer",
    "create_app",
    "embedder_encode_fn",
    "embedding_response",
    "parse_request",
    "require_serve_extra",
    "serve",
]
