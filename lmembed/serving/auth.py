"""API keys: ``Authorization: Bearer <key>`` checked in constant time; keys are never logged."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from lmembed.serving.config import API_KEY_ENV, ServerConfig
from lmembed.serving.protocol import ApiError


def allowed_keys(config: ServerConfig, environ: Mapping[str, str] | None = None) -> list[bytes]:
    """The configured keys plus ``$LMEMBED_API_KEY`` (comma-separated); empty: no auth."""
    environ = os.environ if environ is None else environ
    from_env = [key.strip() for key in environ.get(API_KEY_ENV, "").split(",")]
    keys = [*config.api_keys, *from_env]
    return list(dict.fromkeys(key.encode() for key in keys if key.strip()))


def check_bearer(header: str | None, keys: list[bytes]) -> None:
    """Raise ``ApiError(401)`` unless ``header`` is ``Bearer <one of keys>``.

    Every key is compared (``hmac.compare_digest``, no early exit), so the time taken
    tells an attacker neither which key nor how much of one matched.
    """
    if not keys:
        return
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
        )
    token = given.strip().encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    if not matched:
        raise ApiError(401, "incorrect API key", code="invalid_api_key")
