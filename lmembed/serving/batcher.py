"""Dynamic micro-batching: concurrent requests share one ``encode`` call in one thread.

The model is not thread-safe (nor is a fast tokenizer whose truncation settings
change per call), so every encode runs in a single worker thread. The worker
takes the oldest request and every request queued behind it, then keeps collecting
for the batch window if one is set (up to ``max_batch_inputs`` texts), encodes each
role's requests at once and splits the rows back. With no window (the default) this
is continuous batching, as text-embeddings-inference does it: requests that arrive
while the model runs wait for it and form the next batch, and a lone request on an
idle server waits for nothing. A padded batch of 16 sentences costs far less than 16
single-sentence forward passes, which is where the throughput comes from.

One bad text must not fail the strangers it was batched with. When a batch fails,
the worker first encodes a probe text: if that fails too the model itself is
broken, and every request gets the error (a server fault). Otherwise it bisects the
batch by request, answering the halves that encode, down to the failing request,
then bisects that request's texts down to the first text that fails alone: that
request gets an ``InputError`` naming the text's index (a client fault). A crash of
the worker thread itself fails every waiting request with ``WorkerError``, as does
every later ``submit``: no request is ever left waiting on a dead thread.

The queue is bounded: ``submit`` refuses texts beyond ``max_queue`` (``QueueFullError``).
A text counts until its request is answered, failed or cancelled; a cancelled request
(its client timed out) frees its room at once and is never encoded. ``stop`` encodes
what was queued before it, then refuses with ``UnavailableError``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from lmembed.model.spec import Role
from lmembed.serving.config import ServerConfig

logger = logging.getLogger("lmembed")

EncodeFn = Callable[[list[str], Role | None], tuple[np.ndarray, list[int]]]
Encoded = tuple[np.ndarray, list[int]]
PROBE_TEXTS = ["probe"]


class QueueFullError(RuntimeError):
    """More texts are waiting than ``max_queue``; the caller should retry later."""


class InputError(ValueError):
    """A text of one request that the model cannot encode: the request's fault."""

    def __init__(self, index: int, error: Exception) -> None:
        detail = f"{type(error).__name__}: {error}"
        super().__init__(f"input[{index}] cannot be encoded ({detail[:200]})")
        self.index = index


class WorkerError(RuntimeError):
    """The encode worker is not running (crashed or stopped); nothing can be encoded."""


class UnavailableError(WorkerError):
    """The worker has not started yet or was stopped (startup, shutdown): not a fault."""


@dataclass
class Job:
    texts: list[str]
    role: Role | None = None
    future: Future = field(default_factory=Future)


@dataclass
class BatcherStats:
    encode_calls: int = 0
    requests: int = 0
    inputs: int = 0
    input_errors: int = 0
    server_errors: int = 0


class MicroBatcher:
    """Collects submitted texts into batches for ``encode_fn(texts, role) -> (vectors, counts)``.

    Window, batch and queue bounds come from ``config`` (``ServerConfig``).
    ``batching=False`` encodes each request on its own (the baseline the benchmark
    compares against); requests still run one at a time in the worker thread.
    """

    def __init__(self, encode_fn: EncodeFn, config: ServerConfig | None = None) -> None:
        config = config or ServerConfig()
        self.encode_fn = encode_fn
        self.window_s = config.batch_window_ms / 1000
        self.max_batch_inputs = config.max_batch_inputs
        self.max_queue = config.max_queue
        self.batching = config.batching
        self.stats = BatcherStats()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._current: list[Job] = []
        self._failure: WorkerError | None = UnavailableError("the encode worker has not started")

    @property
    def pending_inputs(self) -> int:
        """Texts of the requests queued or being encoded."""
        return self._pending

    @property
    def alive(self) -> bool:
        """Whether submitted requests will be answered (started, not crashed or stopped)."""
        return self._failure is None

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._failure = None
            self._thread = threading.Thread(target=self._run, name="lmembed-encode", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the batch in progress, fail the queued requests, end the thread."""
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
            self._thread = None
        self._shut(UnavailableError("server shutting down"))

    def submit(self, texts: list[str], role: Role | None = None) -> Future:
        """Queue ``texts``; the future gets ``(vectors, token_counts)`` for them, or
        ``InputError`` (a text of theirs cannot be encoded), ``WorkerError``, or the
        model's own exception (a server fault). Cancel it to withdraw the request."""
        job = Job(list(texts), role)
        with self._lock:  # the check and the put together: a crash drains after either
            if self._failure is not None:
                raise self._failure
            if self._pending + len(texts) > self.max_queue:
                raise QueueFullError(
                    f"{self._pending} texts are already waiting (limit {self.max_queue})"
                )
            self._pending += len(texts)
            self._queue.put(job)
        # Any outcome (answered, failed, cancelled while queued) frees the job's room.
        job.future.add_done_callback(lambda _: self._release(len(job.texts)))
        return job.future

    def _release(self, count: int) -> None:
        with self._lock:
            self._pending -= count

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                jobs, stop = self._collect(first)
                self._current = jobs
                self._process(jobs)
                self._current = []
                if stop:
                    return
        except BaseException as error:  # even SystemExit: a dead worker must not strand requests
            logger.critical("the encode worker crashed; failing every waiting request",
                            exc_info=True)  # fmt: skip
            self._shut(WorkerError(f"the encode worker crashed ({type(error).__name__})"))

    def _shut(self, failure: WorkerError) -> None:
        """Refuse new requests and fail the running and queued ones with ``failure``."""
        with self._lock:
            self._failure = failure
            jobs, self._current = self._current, []
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if job is not None:
                    jobs.append(job)
        for job in jobs:
            _settle(job.future, failure)

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` plus whatever arrives within the window (bounded by max_batch_inputs)."""
        jobs, count = [first], len(first.texts)
        deadline = time.monotonic() + self.window_s
        while self.batching and count < self.max_batch_inputs:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            count += len(job.texts)
        return jobs, False

    def _process(self, jobs: list[Job]) -> None:
        # A request whose client timed out was cancelled: don't spend compute on it.
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        for role in dict.fromkeys(job.role for job in live):
            self._answer([job for job in live if job.role == role], role)

    def _answer(self, jobs: list[Job], role: Role | None, probed: bool = False) -> None:
        """Encode ``jobs`` together; on failure, find who is at fault (see the module doc)."""
        texts = [text for job in jobs for text in job.texts]
        try:
            vectors, counts = self._encode(texts, role)
        except Exception as error:
            if not probed and not self._model_works(role):
                logger.error("encode failed for %d texts and on a probe text too: server fault",
                             len(texts), exc_info=error)  # fmt: skip
                self.stats.server_errors += len(jobs)
                for job in jobs:
                    _settle(job.future, error)
            elif len(jobs) > 1:
                middle = len(jobs) // 2
                self._answer(jobs[:middle], role, probed=True)
                self._answer(jobs[middle:], role, probed=True)
            else:
                self._answer_alone(jobs[0], role, error)
            return
        start = 0
        for job in jobs:
            end = start + len(job.texts)
            self._deliver(job, (vectors[start:end], counts[start:end]))
            start = end

    def _answer_alone(self, job: Job, role: Role | None, error: Exception) -> None:
        try:
            result = self._bisect(job.texts, role, 0, error)
        except InputError as failure:
            logger.warning("request rejected: %s", failure)
            self.stats.input_errors += 1
            _settle(job.future, failure)
        else:
            self._deliver(job, result)

    def _bisect(
        self, texts: list[str], role: Role | None, offset: int, error: Exception | None = None
    ) -> Encoded:
        """Encode ``texts`` in halves until a failing text is alone; ``InputError`` names it.

        ``error``: ``texts`` already failed together with it (no need to try again).
        """
        if error is None:
            try:
                return self._encode(texts, role)
            except Exception as failure:
                error = failure
        if len(texts) == 1:
            raise InputError(offset, error) from error
        middle = len(texts) // 2
        left = self._bisect(texts[:middle], role, offset)
        right = self._bisect(texts[middle:], role, offset + middle)
        return np.concatenate([left[0], right[0]]), [*left[1], *right[1]]

    def _model_works(self, role: Role | None) -> bool:
        try:
            self._encode(PROBE_TEXTS, role)
        except Exception:
            return False
        return True

    def _encode(self, texts: list[str], role: Role | None) -> Encoded:
        self.stats.encode_calls += 1
        return self.encode_fn(texts, role)

    def _deliver(self, job: Job, result: Encoded) -> None:
        self.stats.requests += 1
        self.stats.inputs += len(job.texts)
        job.future.set_result(result)


def _settle(future: Future, error: BaseException) -> None:
    """Fail ``future`` unless it already has an outcome (answered or cancelled)."""
    with contextlib.suppress(InvalidStateError):
        future.set_exception(error)
