"""What happens around every request: its id, the drain gate, faults, metrics, access log.

``RequestObserver`` is a plain ASGI middleware (no ``BaseHTTPMiddleware``: nothing is
buffered or run in another task), outermost but for Starlette's own error layer, so
it sees every request and every status:

* **request id**: the client's ``X-Request-ID`` when it is a short token, else a new
  one; echoed in the response header and the access log line, to join the two;
* **drain**: once ``Drain.begin`` ran (SIGTERM), every new request but ``/metrics`` is
  answered 503 with ``Connection: close``; requests already inside are answered as
  usual, and ``Drain.finished`` tells the server when none is left;
* **faults**: an exception out of an endpoint is logged and answered 500 with
  OpenAI's error body (the client sees its kind, the log its details);
* **metrics**: requests by route template and status, latency by route;
* **access log**: one JSON object per request on the ``lmembed.access`` logger: time,
  request id, method, path, status, latency, inputs and tokens (from the endpoint),
  client address. Headers are never logged, so neither are API keys.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from lmembed.serving.metrics import ServerMetrics
from lmembed.serving.protocol import ApiError

logger = logging.getLogger("lmembed")
access_logger = logging.getLogger("lmembed.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
UNMATCHED = "unmatched"  # the route label of a 404: a path per scanner probe would explode
ALWAYS_OPEN = ("/metrics",)  # scraped while draining too
MAX_LOGGED_PATH = 200


class Drain:
    """Graceful shutdown of one app: refuse new requests, let accepted ones finish.

    ``begin`` (the server's SIGTERM handler) starts it; ``finished`` is true once no
    request is inside the app and ``delay_s`` has passed, so a load balancer that
    polls ``/health`` sees 503 before the port closes. Runs on the event loop only.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.since: float | None = None
        self.active = 0

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
            logger.info("draining: new requests get 503; %d accepted ones still run",
                        self.active)  # fmt: skip

    def finished(self) -> bool:
        if self.since is None:
            return False
        return self.active == 0 and time.monotonic() - self.since >= self.delay_s


class RequestObserver:
    """The ASGI middleware described in the module docstring."""

    def __init__(
        self, app: ASGIApp, metrics: ServerMetrics, drain: Drain, access_log: bool
    ) -> None:
        self.app, self.metrics, self.drain, self.access_log = app, metrics, drain, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, arrived = time.perf_counter(), datetime.now(UTC)
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})  # the endpoint's request.state writes here
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if self.drain.draining:  # the client opens a new connection: to another server
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        self.drain.active += 1
        try:
            if self.drain.draining and scope["path"] not in ALWAYS_OPEN:
                await _answer(send_with_id, ApiError(503, "server shutting down; retry on "
                              "another server", code="shutting_down"))  # fmt: skip
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as error:
            logger.error("internal error answering %s %s", scope["method"], scope["path"],
                         exc_info=error)  # fmt: skip
            if status:  # the response has begun: all that is left is to close the connection
                raise
            await _answer(send_with_id, fault(error))
        finally:
            self.drain.active -= 1
            seconds = time.perf_counter() - started
            route = scope.get("route")
            self.metrics.observe_request(getattr(route, "path", UNMATCHED), status, seconds)
            if self.access_log:
                record = {
                    "time": arrived.isoformat(timespec="milliseconds"),
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"][:MAX_LOGGED_PATH],
                    "status": status,
                    "latency_ms": round(1000 * seconds, 2),
                    "inputs": state.get("inputs"),
                    "tokens": state.get("tokens"),
                    "client": (scope.get("client") or [None])[0],
                }
                access_logger.info(json.dumps(record))


def fault(error: Exception) -> ApiError:
    """The 500 a client sees: the kind of fault, not its internals (those are logged)."""
    return ApiError(
        500, f"internal server error ({type(error).__name__}); the server log has the details"
    )


def error_headers(error: ApiError) -> dict[str, str]:
    """``Retry-After`` on the statuses a client should retry (busy, shutting down), the
    auth scheme on 401."""
    if error.status in (429, 503):
        return {"Retry-After": "1"}
    if error.status == 401:
        return {"WWW-Authenticate": "Bearer"}
    return {}


async def _answer(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error_headers(error).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _request_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if it is a short token (it goes into logs), else new."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if REQUEST_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex
