"""Graceful shutdown: on SIGTERM, drain first, then let uvicorn close, then exit 0.

uvicorn's own SIGTERM handling closes the port at once, closes idle keep-alive
connections (a request a client is sending on one that instant is lost: a reset),
waits for the requests in flight, and then re-raises the signal, so the process ends
"killed by SIGTERM" (exit 143) rather than 0. ``DrainingServer`` puts a drain before
that: the first SIGTERM (or Ctrl-C) only starts ``Drain`` (new requests answered 503
with ``Connection: close``, so clients leave their connections themselves; accepted
ones answered as usual); once it has finished uvicorn's shutdown runs with nothing
left in flight (the app's lifespan then stops the batcher, which encodes anything
still queued first), and the process returns normally: exit 0. A second signal
during the drain is uvicorn's forced exit.
"""

from __future__ import annotations

from types import FrameType

import uvicorn

from lmembed.serving.middleware import Drain


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose first exit signal drains ``drain`` before shutting down."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining:  # a second signal: stop waiting, as uvicorn does
            super().handle_exit(sig, frame)
        else:  # not recorded as uvicorn's captured signal: no re-raise, exit 0
            self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's main loop calls this every 0.1 s; true ends it (shutdown follows)."""
        if self.drain.finished():
            self.should_exit = True
        return await super().on_tick(counter)
