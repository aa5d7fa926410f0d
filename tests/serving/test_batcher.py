"""MicroBatcher on a fake encoder: batching, bounds, failures, cancellation, shutdown."""

import threading

import numpy as np
import pytest

from lmembed.serving.batcher import MicroBatcher, QueueFullError


class FakeEncoder:
    """Vectors that identify their text (its length), and a log of every call's batch."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate = gate

    def __call__(self, texts):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(list(texts))
        if any(t == "boom" for t in texts):
            raise RuntimeError("model exploded")
        vectors = np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
        return vectors, [len(t) + 1 for t in texts]


def _batcher(encoder, **options) -> MicroBatcher:
    batcher = MicroBatcher(encoder, **options)
    batcher.start()
    return batcher


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, window_ms=50)
    requests = [["x" * (i + 1)] * (1 + i % 3) for i in range(10)]
    futures = [batcher.submit(texts) for texts in requests]
    gate.set()
    for texts, future in zip(requests, futures, strict=True):
        vectors, counts = future.result(10)
        assert vectors[:, 0].tolist() == [len(t) for t in texts]
        assert counts == [len(t) + 1 for t in texts]
    batcher.stop()
    # The worker took the first request, then collected the other nine in the window.
    assert len(encoder.calls) <= 2
    assert batcher.stats.requests == 10 and batcher.pending_inputs == 0


def test_without_batching_each_request_is_its_own_call():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, window_ms=50, batching=False)
    futures = [batcher.submit([f"text {i}"]) for i in range(5)]
    gate.set()
    [future.result(10) for future in futures]
    batcher.stop()
    assert [len(call) for call in encoder.calls] == [1] * 5


def test_batch_size_is_bounded():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, window_ms=50, max_batch_inputs=4)
    futures = [batcher.submit(["t"]) for _ in range(10)]
    gate.set()
    [future.result(10) for future in futures]
    batcher.stop()
    assert max(len(call) for call in encoder.calls) <= 4
    assert sum(len(call) for call in encoder.calls) == 10


def test_encode_failure_reaches_the_batch_and_the_worker_survives():
    gate = threading.Event()
    batcher = _batcher(FakeEncoder(gate), window_ms=50)
    bad, also_in_batch = batcher.submit(["boom"]), batcher.submit(["fine"])
    gate.set()
    with pytest.raises(RuntimeError, match="exploded"):
        bad.result(10)
    with pytest.raises(RuntimeError, match="exploded"):
        also_in_batch.result(10)
    vectors, _ = batcher.submit(["after"]).result(10)
    assert vectors[0, 0] == 5
    batcher.stop()


def test_cancelled_requests_are_not_encoded():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, window_ms=0, batching=False)
    running = batcher.submit(["first"])  # the worker blocks on the gate with this one
    gone = batcher.submit(["client went away"])
    assert gone.cancel()
    gate.set()
    running.result(10)
    batcher.submit(["last"]).result(10)
    batcher.stop()
    assert ["client went away"] not in encoder.calls
    assert batcher.pending_inputs == 0


def test_queue_bound_and_shutdown():
    gate = threading.Event()
    batcher = _batcher(FakeEncoder(gate), window_ms=0, max_queue_inputs=3, batching=False)
    first = batcher.submit(["a", "b"])
    queued = batcher.submit(["c"])
    with pytest.raises(QueueFullError, match="limit 3"):
        batcher.submit(["d"])
    gate.set()
    first.result(10)
    queued.result(10)
    batcher.submit(["d"]).result(10)  # room again once the queue drains
    batcher.stop()


def test_stop_leaves_no_request_hanging():
    gate = threading.Event()
    batcher = _batcher(FakeEncoder(gate), window_ms=0, batching=False)
    running = batcher.submit(["a"])
    waiting = batcher.submit(["b"])
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    gate.set()
    stopper.join(10)
    running.result(10)
    # "b" was queued before the stop signal, so it ran or was failed; never left hanging.
    assert waiting.done()


def test_invalid_limits():
    with pytest.raises(ValueError, match="window_ms"):
        MicroBatcher(FakeEncoder(), window_ms=-1)
