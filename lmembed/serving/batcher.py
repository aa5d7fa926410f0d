"""Dynamic micro-batching: concurrent requests share one ``encode`` call in one thread.

The model is not thread-safe (nor is a fast tokenizer whose truncation settings
change per call), so every encode runs in a single worker thread. The worker
takes the oldest request, then keeps collecting requests for ``window_ms`` (or
until ``max_batch_inputs`` texts), encodes them all at once and splits the rows
back. A padded batch of 16 sentences costs far less than 16 single-sentence
forward passes, which is where the throughput comes from.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger("lmembed")

EncodeFn = Callable[[list[str]], tuple[np.ndarray, list[int]]]


class QueueFullError(RuntimeError):
    """More texts are waiting than ``max_queue_inputs``; the caller should retry later."""


@dataclass
class Job:
    texts: list[str]
    future: Future = field(default_factory=Future)


@dataclass
class BatcherStats:
    encode_calls: int = 0
    requests: int = 0
    inputs: int = 0


class MicroBatcher:
    """Collects submitted texts into batches for ``encode_fn(texts) -> (vectors, token_counts)``.

    ``batching=False`` encodes each request on its own (the baseline the benchmark
    compares against); requests still run one at a time in the worker thread.
    """

    def __init__(
        self,
        encode_fn: EncodeFn,
        window_ms: float = 5.0,
        max_batch_inputs: int = 128,
        max_queue_inputs: int = 4096,
        batching: bool = True,
    ) -> None:
        if window_ms < 0 or max_batch_inputs < 1 or max_queue_inputs < 1:
            raise ValueError("window_ms must be >= 0 and the batch/queue limits >= 1")
        self.encode_fn = encode_fn
        self.window_s = window_ms / 1000
        self.max_batch_inputs = max_batch_inputs
        self.max_queue_inputs = max_queue_inputs
        self.batching = batching
        self.stats = BatcherStats()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pending_inputs(self) -> int:
        return self._pending

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmembed-encode", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the batch in progress, fail the queued requests, end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("server shutting down"))

    def submit(self, texts: list[str]) -> Future:
        """Queue ``texts``; the future gets ``(vectors, token_counts)`` for them."""
        with self._lock:
            if self._pending + len(texts) > self.max_queue_inputs:
                raise QueueFullError(
                    f"{self._pending} texts are already waiting (limit {self.max_queue_inputs})"
                )
            self._pending += len(texts)
        job = Job(list(texts))
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            self._process(jobs)
            if stop:
                return

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
        # A request whose client went away was cancelled: don't spend compute on it.
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        texts = [text for job in live for text in job.texts]
        try:
            if live:
                vectors, counts = self.encode_fn(texts)
                self.stats.encode_calls += 1
                self.stats.requests += len(live)
                self.stats.inputs += len(texts)
        except Exception as error:  # every waiting request must hear about it
            logger.exception("encode failed for a batch of %d texts", len(texts))
            for job in live:
                job.future.set_exception(error)
        else:
            start = 0
            for job in live:
                end = start + len(job.texts)
                job.future.set_result((vectors[start:end], counts[start:end]))
                start = end
        finally:
            with self._lock:
                self._pending -= sum(len(job.texts) for job in jobs)
