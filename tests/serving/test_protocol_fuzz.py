"""Fuzzing ``parse_request``: any bytes give a valid request or a 4xx ``ApiError``, nothing else."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmembed.serving import ApiError, EmbeddingRequest, ServerConfig, parse_request

CONFIG = ServerConfig(max_inputs=4, max_chars=50)
DIMENSION = 32
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that includes what a JSON client can send but a tokenizer can't take: lone surrogates.
texts = st.text(max_size=60) | st.builds(
    lambda a, s, b: a + s + b, st.text(max_size=5), st.sampled_from(["\ud800", "\udfff"]),
    st.text(max_size=5),
)  # fmt: skip
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)  # fmt: skip
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5)
)


def field(valid: list) -> st.SearchStrategy:
    return st.sampled_from(valid) | json_values


requests = st.fixed_dictionaries(
    {"input": json_values | texts | st.lists(texts, max_size=6)},
    optional={
        "model": field(["tiny"]),
        "encoding_format": field(["float", "base64"]),
        "dimensions": field([DIMENSION, 8]),
        "input_type": field(["query", "document", "search_query"]),
        "user": json_values,
    },
)


def encode(value, ascii_only: bool) -> bytes:
    """JSON bytes; non-ASCII output keeps lone surrogates raw (invalid UTF-8), as a buggy
    client might send them."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def assert_parses_or_4xx(body: bytes) -> None:
    try:
        request = parse_request(body, CONFIG, DIMENSION)
    except ApiError as error:
        assert 400 <= error.status < 500 and error.message
        json.dumps(error.body())  # the error body itself serialises
        return
    assert isinstance(request, EmbeddingRequest)
    assert 1 <= len(request.texts) <= CONFIG.max_inputs
    for text in request.texts:
        assert isinstance(text, str) and len(text) <= CONFIG.max_chars
        text.encode("utf-8")  # no lone surrogates reach the tokenizer
    assert request.encoding_format in ("float", "base64")
    assert request.role in (None, "query", "document")


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(body):
    assert_parses_or_4xx(body)


@FUZZ
@given(json_values, st.booleans())
def test_random_json_values(value, ascii_only):
    assert_parses_or_4xx(encode(value, ascii_only))


@FUZZ
@given(requests, st.booleans())
def test_request_shaped_objects(value, ascii_only):
    assert_parses_or_4xx(encode(value, ascii_only))


@FUZZ
@given(st.integers(1, 50_000), st.sampled_from([b"[", b'{"input":', b'{"a":[']))
def test_deep_nesting(depth, opener):
    closer = opener.decode()[::-1].translate({ord("["): "]", ord("{"): "}"})
    closer = "".join(c for c in closer if c in "]}").encode()
    assert_parses_or_4xx(opener * depth + b"1" + closer * depth)


def test_a_valid_request_survives_the_fuzz_harness():
    """The harness accepts real requests (so the properties above are not vacuous)."""
    body = encode({"input": ["a", "b"], "input_type": "query", "dimensions": 32}, True)
    request = parse_request(body, CONFIG, DIMENSION)
    assert request.texts == ["a", "b"] and request.role == "query"
