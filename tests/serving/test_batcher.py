"""MicroBatcher on a fake encoder: batching, roles, fault isolation, crashes, bounds, shutdown."""

import threading
import time

import numpy as np
import pytest

from lmembed.serving import (
    InputError,
    MicroBatcher,
    QueueFullError,
    ServerConfig,
    UnavailableError,
    WorkerError,
)


class FakeEncoder:
    """Vectors that identify their text (its length) and role, and a log of every call.

    A text containing "boom" makes the whole call fail, like a tokenizer that rejects
    one text of a batch; ``broken`` makes every call fail, like a dead model.
    """

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.gate = gate
        self.broken: BaseException | None = None

    def __call__(self, texts, role=None):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append((list(texts), role))
        if self.broken is not None:
            raise self.broken
        if any("boom" in t for t in texts):
            raise RuntimeError("tokenizer rejected a text")
        vectors = np.array([[len(t), {None: 0, "query": 1, "document": 2}[role]] for t in texts])
        return vectors.astype(np.float32), [len(t) + 1 for t in texts]


def _batcher(encoder, **options) -> MicroBatcher:
    batcher = MicroBatcher(encoder, ServerConfig(**options))
    batcher.start()
    return batcher


def _lengths(future) -> list[int]:
    return future.result(10)[0][:, 0].astype(int).tolist()


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, batch_window_ms=50)
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


def test_without_a_window_requests_that_wait_for_the_model_form_the_next_batch():
    """The default (continuous batching): a lone request is encoded at once, and the
    requests that arrive while the model runs are encoded together in the next call."""
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder)  # batch_window_ms 0
    first = batcher.submit(["a"])
    deadline = time.monotonic() + 10
    while not batcher._current:  # the worker took it alone and waits on the model
        assert time.monotonic() < deadline
    waiting = [batcher.submit(["b" * (i + 2)]) for i in range(5)]
    gate.set()
    assert _lengths(first) == [1] and [_lengths(f) for f in waiting] == [[2], [3], [4], [5], [6]]
    batcher.stop()
    assert [len(texts) for texts, _ in encoder.calls] == [1, 5]


def test_roles_are_encoded_in_separate_calls():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, batch_window_ms=50)
    roles = ["query", "document", None, "query", "document"]
    futures = [batcher.submit([f"text {i}"], role) for i, role in enumerate(roles)]
    gate.set()
    for role, future in zip(roles, futures, strict=True):
        assert future.result(10)[0][0, 1] == {None: 0, "query": 1, "document": 2}[role]
    batcher.stop()
    # All five arrived within one window: one call per role, each with only its texts.
    assert {role: texts for texts, role in encoder.calls} == {
        "query": ["text 0", "text 3"],
        "document": ["text 1", "text 4"],
        None: ["text 2"],
    }
    assert len(encoder.calls) == 3


def test_without_batching_each_request_is_its_own_call():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, batch_window_ms=50, batching=False)
    futures = [batcher.submit([f"text {i}"]) for i in range(5)]
    gate.set()
    [future.result(10) for future in futures]
    batcher.stop()
    assert [len(texts) for texts, _ in encoder.calls] == [1] * 5


def test_batch_size_is_bounded():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, batch_window_ms=50, max_batch_inputs=4)
    futures = [batcher.submit(["t"]) for _ in range(10)]
    gate.set()
    [future.result(10) for future in futures]
    batcher.stop()
    assert max(len(texts) for texts, _ in encoder.calls) <= 4
    assert sum(len(texts) for texts, _ in encoder.calls) == 10


def test_a_failing_text_fails_only_its_request_and_is_named_by_index():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, batch_window_ms=50)
    good = [[f"fine {i}", "more" * i] for i in range(6)]
    futures = [batcher.submit(texts) for texts in good[:3]]
    bad = batcher.submit(["ok", "also ok", "boom", "after", "boom again"])
    futures += [batcher.submit(texts) for texts in good[3:]]
    gate.set()
    with pytest.raises(InputError, match=r"input\[2\] cannot be encoded.*tokenizer rejected"):
        bad.result(10)
    for texts, future in zip(good, futures, strict=True):
        assert _lengths(future) == [len(t) for t in texts]
    assert batcher.submit(["later"]).result(10)[1] == [6]  # the worker carries on
    batcher.stop()
    assert batcher.stats.input_errors == 1 and batcher.stats.server_errors == 0
    assert batcher.stats.requests == 7


def test_a_broken_model_fails_every_request_as_a_server_fault():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    encoder.broken = MemoryError("out of memory")
    batcher = _batcher(encoder, batch_window_ms=50)
    futures = [batcher.submit([f"text {i}"] * 3) for i in range(4)]
    gate.set()
    for future in futures:
        with pytest.raises(MemoryError):  # not an InputError: nobody's text is at fault
            future.result(10)
    # One batch call and one probe: no per-text search when the model itself fails.
    assert len(encoder.calls) == 2
    encoder.broken = None
    assert _lengths(batcher.submit(["back"])) == [4]
    batcher.stop()


def test_worker_crash_fails_waiting_and_later_requests_instead_of_hanging(caplog):
    class Fatal(BaseException):
        """Escapes ``except Exception``, as a crash of the worker thread itself would."""

    gate = threading.Event()
    encoder = FakeEncoder(gate)
    encoder.broken = Fatal("worker died")
    batcher = _batcher(encoder, batch_window_ms=0, batching=False)
    running = batcher.submit(["a"])
    queued = [batcher.submit([f"b{i}"]) for i in range(3)]
    with caplog.at_level("CRITICAL", logger="lmembed"):
        gate.set()
        for future in [running, *queued]:
            with pytest.raises(WorkerError, match="crashed"):
                future.result(10)
    assert "encode worker crashed" in caplog.text
    assert not batcher.alive
    with pytest.raises(WorkerError, match="crashed"):
        batcher.submit(["after the crash"])
    batcher.stop()


def test_cancelled_requests_are_not_encoded():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, batch_window_ms=0, batching=False)
    running = batcher.submit(["first"])  # the worker blocks on the gate with this one
    gone = batcher.submit(["client went away"])
    assert gone.cancel()
    gate.set()
    running.result(10)
    batcher.submit(["last"]).result(10)
    batcher.stop()
    assert ["client went away"] not in [texts for texts, _ in encoder.calls]
    assert batcher.pending_inputs == 0


def test_queue_bound_and_shutdown():
    gate = threading.Event()
    batcher = _batcher(FakeEncoder(gate), batch_window_ms=0, max_queue=3, batching=False)
    first = batcher.submit(["a", "b"])
    queued = batcher.submit(["c"])
    with pytest.raises(QueueFullError, match="limit 3"):
        batcher.submit(["d"])
    gate.set()
    first.result(10)
    queued.result(10)
    batcher.submit(["d"]).result(10)  # room again once the queue drains
    batcher.stop()


def test_a_cancelled_request_frees_its_room_at_once():
    """A request withdrawn while queued (its client timed out) leaves the queue bound at
    once, not when the worker reaches it, and is never encoded."""
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    batcher = _batcher(encoder, batch_window_ms=0, max_queue=4, batching=False)
    running = batcher.submit(["a"])  # the worker blocks on the gate with this one
    queued = batcher.submit(["b", "c", "d"])
    with pytest.raises(QueueFullError):
        batcher.submit(["e"])
    assert queued.cancel() and batcher.pending_inputs == 1
    later = batcher.submit(["e", "f", "g"])
    gate.set()
    assert _lengths(running) == [1] and _lengths(later) == [1, 1, 1]
    batcher.stop()
    assert ["b", "c", "d"] not in [texts for texts, _ in encoder.calls]
    assert batcher.pending_inputs == 0


def test_stop_leaves_no_request_hanging():
    gate = threading.Event()
    batcher = _batcher(FakeEncoder(gate), batch_window_ms=0, batching=False)
    running = batcher.submit(["a"])
    waiting = batcher.submit(["b"])
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    gate.set()
    stopper.join(10)
    running.result(10)
    # "b" was queued before the stop signal, so it ran or was failed; never left hanging.
    assert waiting.done()
    with pytest.raises(UnavailableError, match="shutting down"):  # a 503, not a fault
        batcher.submit(["too late"])


def test_not_started_refuses_instead_of_queueing():
    with pytest.raises(UnavailableError, match="not started"):
        MicroBatcher(FakeEncoder()).submit(["a"])


def test_invalid_limits():
    with pytest.raises(ValueError, match="batch_window_ms"):
        ServerConfig(batch_window_ms=-1)
    with pytest.raises(ValueError, match="max_queue"):
        ServerConfig(max_queue=0)
    with pytest.raises(ValueError, match="API key is empty"):
        ServerConfig(api_keys=[" "])
    with pytest.raises(ValueError, match="max_batch_tokens"):
        ServerConfig(max_batch_tokens=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        ServerConfig(request_timeout_s=0)
    with pytest.raises(ValueError, match="shutdown_delay_s"):
        ServerConfig(shutdown_delay_s=-1)
    with pytest.raises(ValueError, match="metrics must be one of"):
        ServerConfig(metrics="public")
