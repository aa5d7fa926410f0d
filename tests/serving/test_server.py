"""The embeddings server over real HTTP on loopback: OpenAI client, errors, concurrency."""

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn

from lmembed import Embedder
from lmembed.cli import build_parser
from lmembed.serving import MicroBatcher, QueueFullError, ServerConfig, create_app

TEXTS = ["A man is playing a guitar.", "Two dogs run on the beach.", "", "x" * 300]
CONFIG = ServerConfig(name="tiny", max_inputs=8, max_chars=1000, max_request_bytes=20_000)


@contextmanager
def running(app):
    """uvicorn in a background thread on a free loopback port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
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


@pytest.fixture(scope="module")
def embedder(tiny_llama) -> Embedder:
    return Embedder.from_pretrained(str(tiny_llama), prompt="{s} is: ", max_length=64, dtype="fp32")


@pytest.fixture(scope="module")
def url(embedder):
    with running(create_app(embedder, CONFIG)) as base:
        yield base


def _close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_openai_client_gets_encode_vectors(url, embedder):
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    reference = embedder.encode(TEXTS)
    # The client asks for base64 by default and decodes it; also ask for floats.
    for encoding_format in ("base64", "float"):
        kwargs = {"encoding_format": "float"} if encoding_format == "float" else {}
        response = client.embeddings.create(model="tiny", input=TEXTS, **kwargs)
        _close(np.array([d.embedding for d in response.data], dtype=np.float32), reference)
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    assert response.model == "tiny"
    tokens = sum(len(ids) for ids in embedder.tokenize(TEXTS))
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    single = client.embeddings.create(model="tiny", input=TEXTS[0], encoding_format="float")
    _close(np.array(single.data[0].embedding, dtype=np.float32), reference[0])


def test_raw_http_base64_is_little_endian_float32(url, embedder):
    body = {"input": TEXTS[:2], "model": "tiny", "encoding_format": "base64"}
    payload = httpx.post(f"{url}/v1/embeddings", json=body).json()
    assert payload["object"] == "list" and payload["data"][0]["object"] == "embedding"
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in payload["data"]]
    _close(np.stack(rows), embedder.encode(TEXTS[:2]))


def test_models_and_health(url, embedder):
    models = httpx.get(f"{url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["dimension"] == embedder.dimension


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
    "bad format": (b'{"input": "a", "encoding_format": "int8"}', 400, "encoding_format"),
    "bad model": (b'{"input": "a", "model": 7}', 400, "'model' must be a string"),
    "dimensions": (b'{"input": "a", "dimensions": 8}', 400, "'dimensions' must be 32"),
    "huge body": (json.dumps({"input": ["a" * 900] * 30}).encode(), 413, "over the limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_4xx_with_a_clear_message(url, case):
    body, status, message = BAD_REQUESTS[case]
    response = httpx.post(
        f"{url}/v1/embeddings", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_wrong_method_and_path_are_4xx(url):
    assert httpx.get(f"{url}/v1/embeddings").status_code == 405
    assert httpx.post(f"{url}/v1/nothing", json={}).status_code == 404


def test_openai_client_sees_bad_request_error(url):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError, match="limit of 8"):
        client.embeddings.create(model="tiny", input=["a"] * 9)


def test_concurrent_load_is_batched_with_zero_errors(embedder):
    """200 requests from 16 threads: all succeed, each gets its own rows, calls are shared."""
    pool = [f"sentence number {i} about {'cats' if i % 2 else 'a long walk in the park'}"
            for i in range(40)]  # fmt: skip
    reference = dict(zip(pool, embedder.encode(pool), strict=True))
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


def test_full_queue_is_503_with_retry_after(embedder):
    class FullBatcher(MicroBatcher):
        def submit(self, texts):
            raise QueueFullError("4096 texts are already waiting (limit 4096)")

    batcher = FullBatcher(lambda texts: None)
    with running(create_app(embedder, CONFIG, batcher=batcher)) as base:
        response = httpx.post(f"{base}/v1/embeddings", json={"input": "a"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "server busy" in response.json()["error"]["message"]


def test_serve_command_flags():
    args = build_parser().parse_args(
        ["serve", "--model", "m", "--port", "9000", "--no-batching", "--max-chars", "10"]
    )
    assert (args.port, args.no_batching, args.max_chars, args.host) == (9000, True, 10, "127.0.0.1")
