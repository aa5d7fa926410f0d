"""The embeddings server over real HTTP on loopback: OpenAI client, errors, concurrency."""

import argparse
import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from loopback import running, wait_for

from lmembed import Embedder
from lmembed.options import add_flags, build, given
from lmembed.quantization import unit_rows
from lmembed.serving import MicroBatcher, ServerConfig, create_app

TEXTS = ["A man is playing a guitar.", "Two dogs run on the beach.", "", "x" * 300]
CONFIG = ServerConfig(name="tiny", max_inputs=8, max_chars=1000, max_request_bytes=20_000)


@pytest.fixture(scope="module")
def embedder(tiny_llama) -> Embedder:
    return Embedder.from_pretrained(
        str(tiny_llama),
        prompt="{s} is: ",
        query_prompt="query: {s}",
        document_prompt="passage: {s}",
        max_length=64,
        dtype="fp32",
    )


@pytest.fixture(scope="module")
def url(embedder):
    with running(create_app(embedder, CONFIG)) as base:
        yield base


def _close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _rows(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def _post(base: str, body, **headers) -> httpx.Response:
    """``body`` as JSON with ASCII escapes, so a lone surrogate arrives as ``\\ud800``."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **headers}
    return httpx.post(f"{base}/v1/embeddings", content=content, headers=headers, timeout=30)


def test_openai_client_gets_unit_length_encode_vectors(url, embedder):
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    reference = unit_rows(embedder.encode(TEXTS))
    # The client asks for base64 by default and decodes it; also ask for floats.
    for encoding_format in ("base64", "float"):
        kwargs = {"encoding_format": "float"} if encoding_format == "float" else {}
        response = client.embeddings.create(model="tiny", input=TEXTS, **kwargs)
        rows = np.array([d.embedding for d in response.data], dtype=np.float32)
        _close(rows, reference)
        _close(np.linalg.norm(rows, axis=1), np.ones(len(TEXTS)))
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    assert response.model == "tiny"
    tokens = sum(len(ids) for ids in embedder.tokenize(TEXTS))
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    single = client.embeddings.create(model="tiny", input=TEXTS[0], encoding_format="float")
    _close(np.array(single.data[0].embedding, dtype=np.float32), reference[0])


def test_no_normalize_returns_encode_vectors_as_they_are(embedder):
    raw = embedder.encode(TEXTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1, atol=1e-3)  # the option matters
    with running(create_app(embedder, ServerConfig(normalize=False))) as base:
        _close(_rows(_post(base, {"input": TEXTS})), raw)
        assert httpx.get(f"{base}/health").json()["normalized"] is False


@pytest.mark.parametrize("role", ["query", "document"])
def test_input_type_picks_the_role_prompt(url, embedder, role):
    rows = _rows(_post(url, {"input": TEXTS[:2], "input_type": role}))
    _close(rows, unit_rows(embedder.encode(TEXTS[:2], role=role)))
    assert not np.allclose(rows, unit_rows(embedder.encode(TEXTS[:2])), atol=1e-3)
    usage = _post(url, {"input": TEXTS[:2], "input_type": role}).json()["usage"]
    assert usage["prompt_tokens"] == sum(len(ids) for ids in embedder.tokenize(TEXTS[:2], role))


def test_raw_http_base64_is_little_endian_float32(url, embedder):
    body = {"input": TEXTS[:2], "model": "tiny", "encoding_format": "base64"}
    payload = httpx.post(f"{url}/v1/embeddings", json=body).json()
    assert payload["object"] == "list" and payload["data"][0]["object"] == "embedding"
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in payload["data"]]
    _close(np.stack(rows), unit_rows(embedder.encode(TEXTS[:2])))


def test_models_and_health(url, embedder):
    models = httpx.get(f"{url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["dimension"] == embedder.dimension


def test_name_defaults_to_the_model(embedder, tiny_llama):
    with running(create_app(embedder, ServerConfig())) as base:
        assert _post(base, {"input": "a"}).json()["model"] == str(tiny_llama)


BAD_REQUESTS = {
    "not json": (b"{input: nope", 400, "not valid JSON"),
    "not utf-8": (b'{"input": "\xff\xfe"}', 400, "not valid JSON"),
    "deep nesting": (b"[" * 100_00 + b"]" * 100_00, 400, "not valid JSON"),
    "array body": (b'["a"]', 400, "JSON object"),
    "no input": (b'{"model": "tiny"}', 400, "'input' is required"),
    "number input": (b'{"input": 3}', 400, "string or a list of strings"),
    "token ids": (b'{"input": [[1, 2, 3]]}', 400, "token-id arrays are not supported"),
    "mixed list": (b'{"input": ["a", null]}', 400, "list of strings"),
    "empty list": (b'{"input": []}', 400, "empty list"),
    "too many": (json.dumps({"input": ["a"] * 9}).encode(), 400, "limit of 8"),
    "too long": (json.dumps({"input": ["a" * 1001]}).encode(), 400, "input[0] has 1001"),
    "lone surrogate": (b'{"input": ["ok", "a\\ud800b"]}', 400, "input[1] is not valid Unicode"),
    "bad format": (b'{"input": "a", "encoding_format": "int8"}', 400, "encoding_format"),
    "bad model": (b'{"input": "a", "model": 7}', 400, "'model' must be a string"),
    "dimensions": (b'{"input": "a", "dimensions": 8}', 400, "'dimensions' 8 was not trained"),
    "input_type": (b'{"input": "a", "input_type": "search"}', 400, "'input_type' must be"),
    "huge body": (json.dumps({"input": ["a" * 900] * 30}).encode(), 413, "over the limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_4xx_with_a_clear_message(url, case):
    body, status, message = BAD_REQUESTS[case]
    response = _post(url, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_wrong_method_and_path_are_4xx_with_openai_bodies(url):
    for response, status in [
        (httpx.get(f"{url}/v1/embeddings"), 405),
        (httpx.post(f"{url}/v1/nothing", json={}), 404),
    ]:
        assert response.status_code == status
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_openai_client_sees_bad_request_error(url):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError, match="limit of 8"):
        client.embeddings.create(model="tiny", input=["a"] * 9)


def _concurrently(base: str, bodies: list) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(bodies)) as workers:
        return list(workers.map(lambda body: _post(base, body), bodies))


def test_a_text_the_model_rejects_fails_only_its_request(embedder, monkeypatch):
    """A tokenizer that raises on one text (a control character it refuses): that request
    gets 400 naming the index; the requests batched with it get their correct vectors."""
    tokenize = embedder.tokenize

    def picky(texts, role=None):
        if any("\x07" in text for text in texts):
            raise ValueError("control character U+0007 is not allowed")
        return tokenize(texts, role)

    monkeypatch.setattr(embedder, "tokenize", picky)
    good = [[f"sentence {i}", TEXTS[i % 2]] for i in range(6)]
    bad = {"input": ["fine", "also fine", "bell \x07 here"]}
    config = ServerConfig(batch_window_ms=300)
    with running(create_app(embedder, config)) as base:
        responses = _concurrently(base, [{"input": t} for t in good[:3]] + [bad] +
                                  [{"input": t} for t in good[3:]])  # fmt: skip
        health = httpx.get(f"{base}/health").json()
    rejected = responses.pop(3)
    assert rejected.status_code == 400
    error = rejected.json()["error"]
    assert error["param"] == "input" and "input[2] cannot be encoded" in error["message"]
    assert "control character" in error["message"]
    monkeypatch.undo()
    for texts, response in zip(good, responses, strict=True):
        _close(_rows(response), unit_rows(embedder.encode(texts)))
    assert health["input_errors"] == 1 and health["requests"] == 6


def test_a_lone_surrogate_in_the_batch_fails_only_its_request(embedder):
    """Past the parser (``submit`` directly), the real tokenizer's TypeError on a lone
    surrogate fails only that request; its batch-mates get their own vectors."""
    from lmembed.serving import InputError, embedder_encode_fn

    config = ServerConfig(batch_window_ms=200)
    batcher = MicroBatcher(embedder_encode_fn(embedder, config), config)
    batcher.start()
    try:
        futures = [batcher.submit([t]) for t in TEXTS[:2]]
        bad = batcher.submit(["fine", "a\ud800b"])
        futures.append(batcher.submit(TEXTS[2:]))
        with pytest.raises(InputError, match=r"input\[1\] cannot be encoded \(TypeError"):
            bad.result(30)
        results = [future.result(30)[0] for future in futures]
    finally:
        batcher.stop()
    reference = unit_rows(embedder.encode(TEXTS))
    _close(np.concatenate(results), reference)


def test_surrogate_requests_next_to_good_ones_over_http(url, embedder):
    bodies = [{"input": TEXTS[:2]}, {"input": "\udfff"}, {"input": TEXTS[2:]}]
    good1, bad, good2 = _concurrently(url, bodies)
    assert bad.status_code == 400 and "input[0]" in bad.json()["error"]["message"]
    _close(np.concatenate([_rows(good1), _rows(good2)]), unit_rows(embedder.encode(TEXTS)))


def test_a_broken_model_is_a_500_with_a_body_and_a_log_line(embedder, caplog):
    def broken(texts, role):
        raise RuntimeError("CUDA error: device lost")

    batcher = MicroBatcher(broken, CONFIG)
    with (
        caplog.at_level("ERROR", logger="lmembed"),
        running(create_app(embedder, CONFIG, batcher=batcher)) as base,
    ):
        response = _post(base, {"input": "a"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "RuntimeError" in error["message"]
    assert "device lost" in caplog.text and "server fault" in caplog.text


def test_a_bug_after_encoding_is_a_500_with_a_body_and_a_log_line(embedder, caplog):
    """Any unexpected exception in the endpoint (here: rows that are not numbers)."""

    def garbage(texts, role):
        return np.array([["not a number"]] * len(texts)), [1] * len(texts)

    batcher = MicroBatcher(garbage, CONFIG)
    app = create_app(embedder, CONFIG, batcher=batcher)
    with caplog.at_level("ERROR", logger="lmembed"), running(app) as base:
        response = _post(base, {"input": "a"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "internal error answering POST /v1/embeddings" in caplog.text


def test_a_worker_crash_answers_500_and_never_hangs(embedder):
    class Fatal(BaseException):
        """Escapes ``except Exception``: the worker thread itself dies."""

    def crash(texts, role):
        raise Fatal("segfault-like")

    batcher = MicroBatcher(crash, CONFIG)
    with running(create_app(embedder, CONFIG, batcher=batcher)) as base:
        first = _post(base, {"input": "a"})  # times out after 30 s instead of hanging
        later = _post(base, {"input": "b"})
        health = httpx.get(f"{base}/health")
    for response in (first, later):
        assert response.status_code == 500
        assert "WorkerError" in response.json()["error"]["message"]
    assert health.status_code == 503 and health.json()["status"] == "error"


def test_api_keys_from_config_and_environment(embedder, monkeypatch, caplog):
    monkeypatch.setenv("LMEMBED_API_KEY", "env-key-1, env-key-2")
    config = ServerConfig(api_keys=["flag-key"])
    with caplog.at_level("DEBUG"), running(create_app(embedder, config)) as base:
        missing = _post(base, {"input": "a"})
        wrong = _post(base, {"input": "a"}, authorization="Bearer flag-kex")
        not_bearer = _post(base, {"input": "a"}, authorization="Basic flag-key")
        accepted = [
            _post(base, {"input": "a"}, authorization=f"Bearer {key}")
            for key in ("flag-key", "env-key-1", "env-key-2")
        ]
        models_open = httpx.get(f"{base}/v1/models")
        models = httpx.get(f"{base}/v1/models", headers={"authorization": "Bearer env-key-2"})
        health = httpx.get(f"{base}/health")
    for response in (missing, wrong, not_bearer, models_open):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    assert [r.status_code for r in accepted] == [200, 200, 200]
    assert models.status_code == 200 and health.status_code == 200
    for key in ("flag-key", "flag-kex", "env-key-1", "env-key-2"):
        assert key not in caplog.text


def test_concurrent_load_is_batched_with_zero_errors(embedder):
    """200 requests from 16 threads: all succeed, each gets its own rows, calls are shared."""
    pool = [f"sentence number {i} about {'cats' if i % 2 else 'a long walk in the park'}"
            for i in range(40)]  # fmt: skip
    reference = dict(zip(pool, unit_rows(embedder.encode(pool)), strict=True))
    rng = np.random.default_rng(0)
    requests = [list(rng.choice(pool, size=1 + i % 3)) for i in range(200)]
    config = ServerConfig(name="tiny", batch_window_ms=5)
    started = time.monotonic()
    with running(create_app(embedder, config)) as base, httpx.Client(base_url=base) as client:

        def call(texts):
            response = client.post("/v1/embeddings", json={"input": texts, "model": "tiny"})
            response.raise_for_status()
            return texts, [d["embedding"] for d in response.json()["data"]]

        with ThreadPoolExecutor(16) as workers:
            results = list(workers.map(call, requests))
        health = client.get("/health").json()
    assert time.monotonic() - started < 60
    for texts, rows in results:
        _close(np.array(rows, dtype=np.float32), np.stack([reference[t] for t in texts]))
    assert health["requests"] == 200 and health["encode_calls"] < 200


def test_full_queue_is_429_with_retry_after(embedder):
    """Texts beyond ``max_queue`` (here: a request blocks the worker with two texts) are
    refused at once with 429, not queued; once the queue drains there is room again."""
    gate = threading.Event()

    def gated(texts, role):
        gate.wait(30)
        return np.ones((len(texts), 4), dtype=np.float32), [1] * len(texts)

    config = ServerConfig(max_queue=2)
    batcher = MicroBatcher(gated, config)
    with (
        running(create_app(embedder, config, batcher=batcher)) as base,
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(_post, base, {"input": ["a", "b"]})
        wait_for(lambda: batcher.pending_inputs == 2)
        busy = _post(base, {"input": "c"})
        gate.set()
        assert first.result().status_code == 200
        assert _post(base, {"input": "c"}).status_code == 200
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    error = busy.json()["error"]
    assert "server busy" in error["message"] and "limit 2" in error["message"]
    assert error["code"] == "overloaded" and error["type"] == "server_error"


def test_serve_flags_come_from_server_config():
    """Every serve option is a ``ServerConfig`` field, so ``add_flags`` gives the flags."""
    parser = argparse.ArgumentParser()
    names = add_flags(parser, ServerConfig)
    argv = ["--port", "9000", "--no-batching", "--max-queue", "10", "--no-normalize",
            "--api-key", "a", "--api-key", "b", "--batch-window-ms", "2.5",
            "--max-batch-tokens", "4096", "--request-timeout-s", "5", "--metrics", "key",
            "--no-access-log", "--shutdown-delay-s", "2"]  # fmt: skip
    config = build(ServerConfig, given(parser.parse_args(argv), names))
    assert config == ServerConfig(
        port=9000, batching=False, max_queue=10, normalize=False, api_keys=["a", "b"],
        batch_window_ms=2.5, max_batch_tokens=4096, request_timeout_s=5.0, metrics="key",
        access_log=False, shutdown_delay_s=2.0,
    )  # fmt: skip
    with pytest.raises(SystemExit):  # argparse: invalid choice
        parser.parse_args(["--metrics", "public"])
    assert build(ServerConfig, given(parser.parse_args([]), names)) == ServerConfig()


def test_dimensions_truncate_to_trained_sizes_only(embedder):
    trained = Embedder(
        embedder.model, embedder.tokenizer, embedder.spec.replace(matryoshka_dims=[16])
    )
    full = trained.encode(TEXTS[:2])
    with running(create_app(trained, ServerConfig())) as base:
        rows = _rows(_post(base, {"input": TEXTS[:2], "dimensions": 16}))
        _close(rows, unit_rows(full[:, :16]))
        untrained = _post(base, {"input": TEXTS[:2], "dimensions": 8})
        assert untrained.status_code == 400 and "--allow-any-dims" in untrained.text
        assert _post(base, {"input": "a", "dimensions": 10_000}).status_code == 400
    with running(create_app(trained, ServerConfig(allow_any_dims=True))) as base:
        _close(_rows(_post(base, {"input": TEXTS[:2], "dimensions": 8})), unit_rows(full[:, :8]))
