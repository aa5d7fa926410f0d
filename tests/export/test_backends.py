"""ONNX Runtime and OpenVINO backends give ``Embedder.encode``'s vectors (LoRA merged)."""

import json
import re
import typing

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model, require_shared, tiny_tokenizer
from transformers import AutoModel
from transformers.models.mamba.configuration_mamba import MambaConfig

from lmembed import Embedder, TrainConfig, train
from lmembed.backends import BackendOptions, load_encoder
from lmembed.data import load_sts
from lmembed.export import ExportError, export
from lmembed.options import literal_choices

# Each case stresses one part of the recipe the runtime path must reproduce.
CASES = {
    # right padding, suffix prompt, last token, most sentences truncated (EOS kept)
    "llama-suffix-truncated": dict(arch="llama", prompt="{s} is: ", pooling="last", max_length=24),
    # pad == eos, left padding, prefix prompt, mean pooling
    "qwen2-padeos-left-mean": dict(
        arch="qwen2", pad_is_eos=True, padding_side="left", prompt="query: {s}", pooling="mean"
    ),
    # BOS-adding tokenizer, left padding, query/document prompts, sliding-window attention
    "gemma3-left-roles": dict(
        arch="gemma3",
        padding_side="left",
        query_prompt="query: {s} means:",
        document_prompt='This sentence: "{s}" means in one word:"',
        pooling="last",
        max_length=64,
    ),
}


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return load_sts("stsb", require_shared("sts").parent).sentences1[:40]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """``adapters(case)``: a tiny model of the case trained 2 steps (once per module)."""
    trained = {}

    def get(case: str):
        if case not in trained:
            trained[case] = _train(tmp_path_factory.mktemp(case), **CASES[case])
        return trained[case]

    return get


def _train(folder, arch, pad_is_eos=False, padding_side="right", **options):
    nli = require_shared("nli/snli_devtest_triplets_tok.csv.gz")
    model = make_tiny_model(folder / arch, arch, pad_is_eos, padding_side)
    config = TrainConfig.from_flat(
        model=str(model), data=str(nli), limit=32, output=str(folder / "run"), steps=2,
        batch_size=8, lr=2e-2, warmup=0, dtype="fp32", save_every=0, seed=0, **options,
    )  # fmt: skip
    return train(config).output


def _weight_bytes(folder) -> int:
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in graph.initializer)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_and_openvino_reproduce_encode(case, tmp_path, adapters, sentences):
    adapter = adapters(case)
    tuned = Embedder.from_pretrained(adapter=adapter, dtype="fp32")
    base = Embedder.from_pretrained(tuned.spec.model, dtype="fp32", pooling=tuned.spec.pooling)
    roles = ("query", "document") if tuned.spec.query_prompt else (None,)
    out = export(tmp_path / "onnx", kind="onnx", adapter=adapter)
    assert json.loads((out / "lmembed.json").read_text())["backend"] == "onnx"
    engines = {name: load_encoder({"model": str(out)}, name) for name in ("onnx", "openvino")}
    for role in roles:
        reference = tuned.encode(sentences, batch_size=16, role=role)
        # An export that lost the LoRA weights would pass the check below otherwise.
        untrained = base.encode(tuned.apply_prompt(sentences, role), batch_size=16)
        assert _cosines(untrained, reference).min() < 0.9999, "training changed too little"
        for name, engine in engines.items():
            assert engine.spec.pooling == tuned.spec.pooling and engine.dimension == 32
            vectors = engine.encode(sentences, batch_size=7, role=role)
            assert vectors.dtype == np.float32 and vectors.shape == reference.shape
            assert _cosines(vectors, reference).min() >= 0.9999, (name, role)


# Largest weight size against fp32: int8-block leaves the embedding table (a Gather) in fp32.
INT8_SIZE = {"int8": 0.35, "int8-block": 0.6}


@pytest.mark.parametrize("quantize", ["int8", "int8-block"])
def test_int8_export_is_smaller_and_agrees_loosely(tmp_path, adapters, sentences, quantize):
    adapter = adapters("llama-suffix-truncated")
    reference = Embedder.from_pretrained(adapter=adapter, dtype="fp32").encode(sentences)
    fp32 = export(tmp_path / "fp32", kind="onnx", adapter=adapter)
    int8 = export(tmp_path / "int8", kind="onnx", adapter=adapter, quantize=quantize)
    graph = json.loads((int8 / "lmembed.json").read_text())["graph"]
    assert graph["quantize"] == quantize and graph["agreement"] > 0.95
    assert _weight_bytes(int8) < INT8_SIZE[quantize] * _weight_bytes(fp32)
    for name in ("onnx", "openvino"):
        vectors = load_encoder({"model": str(int8)}, name).encode(sentences)
        cosine = _cosines(vectors, reference)
        assert cosine.min() > 0.95 and cosine.min() < 0.99999, (name, cosine.min())


def test_int8_export_is_refused_when_quantisation_breaks_the_vectors(
    tmp_path, tiny_llama, monkeypatch
):
    """Gemma-3's int8 graph scores a token cosine of about 0.1 against torch (its activation
    outliers); a tiny model does not reproduce that, so the int8 graph is swapped for one
    that computes something else (another model's fp32 graph). The export must stop, say
    why, and write nothing."""
    from lmembed.backends import onnx

    other = make_tiny_model(tmp_path / "other", "llama")
    model = AutoModel.from_pretrained(other)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))
    model.save_pretrained(other)
    wrong = export(tmp_path / "other-onnx", kind="onnx", model=str(other)) / onnx.ONNX_FILE
    monkeypatch.setitem(onnx.QUANTIZERS, "int8", lambda source, target: target.write_bytes(
        wrong.read_bytes()))  # fmt: skip
    with pytest.raises(ExportError, match="--quantize int8 breaks .* try --quantize int8-block"):
        export(tmp_path / "int8", kind="onnx", model=str(tiny_llama), quantize="int8")
    assert not (tmp_path / "int8").exists()


def test_openvino_export_runs_on_openvino_only(tmp_path, adapters, sentences):
    adapter = adapters("qwen2-padeos-left-mean")
    reference = Embedder.from_pretrained(adapter=adapter, dtype="fp32").encode(sentences)
    out = export(tmp_path / "ov", kind="openvino", adapter=adapter)
    assert (out / "openvino_model.xml").is_file() and not (out / "model.onnx").exists()
    vectors = load_encoder({"model": str(out)}, "openvino").encode(sentences, batch_size=5)
    assert _cosines(vectors, reference).min() >= 0.9999
    with pytest.raises(ExportError, match="--backend openvino"):
        load_encoder({"model": str(out)}, "onnx")
    with pytest.raises(ExportError, match="no torch weights"):
        load_encoder({"model": str(out)}, "torch")


def test_backend_exports_a_model_and_adapter_once_into_the_cache(
    tmp_path, adapters, sentences, monkeypatch
):
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path / "cache"))
    adapter = adapters("llama-suffix-truncated")
    options = {"adapter": str(adapter), "dtype": "fp32"}
    reference = load_encoder(options, "torch")
    assert type(reference) is Embedder
    expected = reference.encode(sentences)
    onnx = load_encoder(options, "onnx")
    assert _cosines(onnx.encode(sentences), expected).min() >= 0.9999
    exports = list((tmp_path / "cache" / "exports").iterdir())
    assert len(exports) == 1
    stamp = (exports[0] / "model.onnx").stat().st_mtime_ns
    # Same weights, another prompt: the cached graph is reused, the prompt applies at run time.
    prompted = load_encoder({**options, "prompt": "{s} means: "}, "openvino")
    assert (exports[0] / "model.onnx").stat().st_mtime_ns == stamp
    want = Embedder.from_pretrained(adapter=adapter, dtype="fp32", prompt="{s} means: ")
    got = prompted.encode(sentences)
    assert _cosines(got, want.encode(sentences)).min() >= 0.9999
    assert _cosines(got, expected).min() < 0.9999  # the prompt really changed the input
    assert onnx.encode([]).shape == (0, 32)


def test_unsupported_architecture_fails_with_the_reason(tmp_path):
    """Mamba traces, but its graph keeps the traced sequence length: refused, not written."""
    tokenizer = tiny_tokenizer()
    config = MambaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, state_size=4,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(tmp_path / "mamba")
    tokenizer.save_pretrained(tmp_path / "mamba")
    with pytest.raises(ExportError, match=r"mamba.*cannot be exported to ONNX: .*new batch shape"):
        export(tmp_path / "out", kind="onnx", model=str(tmp_path / "mamba"))
    assert not (tmp_path / "out").exists()


def test_options_and_errors(tmp_path, tiny_llama):
    kind = typing.get_type_hints(BackendOptions)["backend"]
    assert literal_choices(kind) == ("torch", "onnx", "openvino")
    assert BackendOptions().backend == "torch"
    precision = typing.get_type_hints(BackendOptions)["runtime_precision"]
    assert literal_choices(precision) == ("fp32", "bf16", "auto")
    assert BackendOptions().runtime_precision == "fp32"
    applies = re.escape("--quantize int8|int8-block applies to --format onnx")
    with pytest.raises(ExportError, match=applies):
        export(tmp_path / "x", kind="merged", quantize="int8", model=str(tiny_llama))
    with pytest.raises(ValueError, match="backend must be one of"):
        load_encoder({"model": str(tiny_llama)}, "tensorrt")


@pytest.mark.parametrize("native", [True, False])
def test_openvino_computes_in_the_runtime_precision_and_onnx_torch_refuse_it(
    tmp_path, adapters, sentences, monkeypatch, native
):
    """OpenVINO keeps the graph's fp32 by default and whatever --dtype says; the hint is
    --runtime-precision (auto: bf16 where the CPU has bf16 units). ONNX Runtime has fp32
    only; torch computes in --dtype and refuses the flag."""
    import openvino as ov

    adapter = adapters("llama-suffix-truncated")
    reference = Embedder.from_pretrained(adapter=adapter, dtype="fp32").encode(sentences)
    out = export(tmp_path / "onnx", kind="onnx", adapter=adapter)
    hints = []
    compile_model = ov.Core.compile_model

    def recording(core, model, device, config):
        hints.append(config["INFERENCE_PRECISION_HINT"])
        return compile_model(core, model, device, config)

    monkeypatch.setattr(ov.Core, "compile_model", recording)
    monkeypatch.setattr("lmembed.model.spec.native_bf16", lambda: native)
    auto = "bf16" if native else "f32"
    cases = [  # (--dtype, --runtime-precision, hint)
        (None, None, "f32"), ("bf16", None, "f32"), ("fp32", "fp32", "f32"),
        (None, "bf16", "bf16"), ("fp32", "auto", auto),
    ]  # fmt: skip
    for dtype, precision, hint in cases:
        engine_flags = {"runtime_precision": precision} if precision else {}
        engine = load_encoder({"model": str(out), "dtype": dtype}, "openvino", **engine_flags)
        assert hints[-1] == hint, (dtype, precision)
        assert engine.spec.dtype == {"f32": "fp32", "bf16": "bf16"}[hint]
        if hint == "bf16" and not native:
            continue  # emulated bf16 is slow and adds nothing the native case does not check
        vectors = engine.encode(sentences)
        assert vectors.dtype == np.float32
        floor = 0.9999 if hint == "f32" else 0.98
        assert _cosines(vectors, reference).min() >= floor, (dtype, precision)
    refused = "--backend onnx computes in fp32.*--backend openvino --runtime-precision bf16"
    with pytest.raises(ExportError, match=refused):
        load_encoder({"model": str(out)}, "onnx", runtime_precision="bf16")
    with pytest.raises(ExportError, match="--backend onnx computes in fp32"):
        load_encoder({"model": str(out)}, "onnx", runtime_precision="auto")
    assert load_encoder({"model": str(out), "dtype": "bf16"}, "onnx").spec.dtype == "fp32"
    with pytest.raises(ValueError, match="--backend torch computes in --dtype"):
        load_encoder({"adapter": str(adapter)}, "torch", runtime_precision="bf16")
    with pytest.raises(ValueError, match="runtime_precision must be one of"):
        load_encoder({"model": str(out)}, "openvino", runtime_precision="fp16")
