"""A real uvicorn server on a free loopback port, and waiting on it, for the serving tests."""

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn


@contextmanager
def running(app):
    """uvicorn in a background thread on a free loopback port; yields the base URL."""
    with serving(uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))) as url:
        yield url


@contextmanager
def serving(server: uvicorn.Server):
    """``server`` (any ``uvicorn.Server``) in a background thread on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_for(condition, seconds: float = 10) -> None:
    """Poll ``condition`` until it holds (a queued request, a drained server); fail after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
