"""OpenAI's embeddings wire format: request parsing, the response, and the error body.

``parse_request`` turns any bytes into an ``EmbeddingRequest`` or raises ``ApiError``
with a 4xx status and a message saying what to fix; no other exception escapes it
(the fuzz tests hold it to that). Checks, all 400:

* invalid JSON (also non-UTF-8 bytes and absurd nesting), a body that is not an object;
* ``input`` missing, not a string or list of strings (token-id arrays included), empty
  list, more than ``max_inputs`` texts, a text over ``max_chars`` characters, a text with
  a lone surrogate (valid JSON, ``"\\ud800"``, but not Unicode text a tokenizer takes);
* ``encoding_format`` other than ``float``/``base64``; ``model`` not a string;
  ``dimensions`` other than the model's; ``input_type`` other than ``query``/``document``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmembed.model.spec import ROLES, Role
from lmembed.serving.config import ServerConfig

ENCODING_FORMATS = ("float", "base64")


class ApiError(Exception):
    """A problem reported to the client as ``status`` with OpenAI's error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        """OpenAI's error body; a 429 (the server is busy) is not the request's fault."""
        client_fault = self.status < 500 and self.status != 429
        kind = "invalid_request_error" if client_fault else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return {"error": error}


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    encoding_format: str
    role: Role | None = None
    dimensions: int | None = None


def parse_request(
    body: bytes, config: ServerConfig, dimension: int, trained_dims: Sequence[int] = ()
) -> EmbeddingRequest:
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
            f"'encoding_format' must be 'float' or 'base64', got {_short(encoding_format)}",
            "encoding_format",
        )
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", "model")
    dimensions = _dimensions(data.get("dimensions"), config, dimension, trained_dims)
    return EmbeddingRequest(texts, encoding_format, _role(data.get("input_type")), dimensions)


def _dimensions(
    value: Any, config: ServerConfig, dimension: int, trained_dims: Sequence[int]
) -> int | None:
    """``dimensions``: the model's size, a size it was trained for (Matryoshka), or with
    ``allow_any_dims`` any size up to the model's; the vectors are then truncated."""
    if value is None or value == dimension and type(value) is int:
        return None
    allowed = sorted({dimension, *trained_dims})
    if type(value) is not int or value < 1 or value > dimension:
        raise ApiError(
            400,
            f"'dimensions' must be an integer in 1..{dimension}, got {_short(value)}",
            "dimensions",
        )
    if value not in allowed and not config.allow_any_dims:
        raise ApiError(
            400,
            f"'dimensions' {value} was not trained (Matryoshka sizes: {allowed}); start the "
            "server with --allow-any-dims to truncate anyway",
            "dimensions",
        )
    return value


def _role(value: Any) -> Role | None:
    """``input_type``: absent or null (OpenAI) means the symmetric prompt."""
    if value is None or (isinstance(value, str) and value in ROLES):
        return value
    raise ApiError(
        400,
        f"'input_type' must be 'query' or 'document' (or absent), got {_short(value)}",
        "input_type",
    )


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
        _check_text(index, text, config.max_chars)
    return texts


def _check_text(index: int, text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise ApiError(
            400,
            f"input[{index}] has {len(text)} characters, over this server's limit of "
            f"{max_chars} (texts over the model's token limit are truncated; this "
            "limit bounds the work one request can ask for)",
            "input",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(
            400,
            f"input[{index}] is not valid Unicode text: a lone surrogate "
            f"({ascii(text[error.start])}) at character {error.start}; send surrogates "
            "in pairs (or the character itself)",
            "input",
        ) from None


def _short(value: Any, limit: int = 60) -> str:
    """A value for an error message: scalars shown (cut short), containers by their kind."""
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    text = repr(value[:limit] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
