"""``--format gguf``: the file reads back, and transformers' GGUF loader gets lmembed's vectors.

Each tiny model has a byte-level BPE tokenizer with real merges (trained here), so the
vocabulary written to the file has to round-trip through transformers' GGUF tokenizer too.
llama.cpp itself is checked by ``python -m bench.bench_gguf`` (its own environment).
"""

import typing

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import (
    ARCHITECTURES,
    SPECIALS,
    TINY,
    make_tiny_model,
    random_lora_adapter,
    require_packaged_model,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig

from lmembed import Embedder
from lmembed.cli import ExportOptions, main
from lmembed.export import ExportError, export
from lmembed.export.gguf import GGUF_FILE, source_gguf
from lmembed.model.gguf_cache import _without_quantization, dequantise_by_rows, gguf_cache
from lmembed.model_card import QUANTIZE_TEXT
from lmembed.options import literal_choices

PROMPT = "{s} is: "
WORDS = ["man", "woman", "dog", "cat", "child", "guitar", "street", "park", "table", "car"]
TEXTS = [
    "A man is playing a guitar.",
    "Two children run in the park!",
    "The cat sits on the table, looking at 3 dogs.",
    "hello",
    "Ünïcödé and emoji 🎸 survive the byte-level vocabulary",
]
# q8_0 rounds every weight to one of 255 steps per block of 32; the tiny models keep 0.9999.
Q8_COSINE = 0.99
CONFIGS = {
    "llama": ARCHITECTURES["llama"],
    "qwen2": ARCHITECTURES["qwen2"],
    # llama.cpp scales Gemma-3 attention by 1/sqrt(head_dim) and transformers' GGUF loader
    # by its default query_pre_attn_scalar (256): head_dim 256 agrees with both.
    "gemma3": lambda v: Gemma3TextConfig(vocab_size=v, head_dim=256, sliding_window=8, **TINY),
}


def bpe_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE with merges learnt from a small corpus; ``bos``: it starts texts with
    BOS, as Gemma's does (Llama's and Qwen2's tiny ones do not)."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [f"the {a} and a {b} is in the {c}." for a in WORDS for b in WORDS for c in WORDS[5:]]
    backend.train_from_iterator(corpus, trainer)
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>",
    )  # fmt: skip


def make_model(folder, arch: str):
    tokenizer = bpe_tokenizer(bos=arch == "gemma3")
    config = CONFIGS[arch](len(tokenizer))
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    # Weights large enough that attention is not uniform: rotary layout errors then show.
    config.initializer_range = 0.3
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """``adapters(arch)``: a random all-linear LoRA on a tiny ``arch`` model (once each)."""
    made = {}

    def get(arch: str) -> str:
        if arch not in made:
            root = tmp_path_factory.mktemp(arch)
            made[arch] = random_lora_adapter(root / "adapter", make_model(root / "base", arch))
        return made[arch]

    return get


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def layout(reader: gguf.GGUFReader) -> list[tuple[str, list[int]]]:
    return sorted((t.name, t.shape.tolist()) for t in reader.tensors)


def load_gguf(folder) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """The file as transformers' GGUF loader reads it (weights dequantised to fp32)."""
    model = AutoModel.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)


def check_vectors(folder, reference: Embedder, least: float) -> np.ndarray:
    """Tokens and vectors through the GGUF equal lmembed's; returns the cosines."""
    model, tokenizer = load_gguf(folder)
    loaded = Embedder(model, tokenizer, reference.spec).eval()
    assert loaded.tokenize(TEXTS) == reference.tokenize(TEXTS)
    cosine = cosines(loaded.encode(TEXTS), reference.encode(TEXTS))
    assert cosine.min() >= least, cosine
    return cosine


@pytest.mark.parametrize("quantize", ["f16", "q8_0"])
@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_gguf_reproduces_encode(arch, quantize, tmp_path, adapters):
    adapter = adapters(arch)
    tuned = Embedder.from_pretrained(adapter=adapter, dtype="fp32", prompt=PROMPT)
    base = Embedder.from_pretrained(tuned.spec.model, dtype="fp32", prompt=PROMPT)
    # The vector check would pass for an export that lost the LoRA otherwise.
    assert cosines(base.encode(TEXTS), tuned.encode(TEXTS)).min() < 0.999
    out = export(tmp_path / "gguf", "gguf", quantize=quantize, adapter=adapter, prompt=PROMPT)

    reader = gguf.GGUFReader(out / GGUF_FILE)
    name = field(reader, "general.architecture")
    assert name == {"gemma3": "gemma3", "llama": "llama", "qwen2": "qwen2"}[arch]
    assert field(reader, f"{name}.pooling_type") == gguf.PoolingType.LAST
    assert field(reader, "tokenizer.ggml.add_eos_token") is True
    assert field(reader, "tokenizer.ggml.add_bos_token") is (arch == "gemma3")
    assert field(reader, "tokenizer.ggml.eos_token_id") == tuned.eos_id
    assert field(reader, "tokenizer.ggml.tokens") == [
        tuned.tokenizer.convert_ids_to_tokens(i) for i in range(len(tuned.tokenizer))
    ]
    assert field(reader, "lmembed.prompt") == PROMPT
    assert PROMPT in field(reader, "general.description")
    state = tuned.model.state_dict()
    assert len(reader.tensors) == len(state)
    stored = {t.name: t for t in reader.tensors}
    assert sorted(int(np.prod(t.shape)) for t in reader.tensors) == sorted(
        v.numel() for v in state.values()
    )
    weight = {"f16": "F16", "q8_0": "Q8_0"}[quantize]
    for tensor in reader.tensors:
        vector = len(tensor.shape) == 1 or tensor.name.endswith("_norm.weight")
        assert tensor.tensor_type.name == ("F32" if vector else weight), tensor.name
    assert stored["token_embd.weight"].shape.tolist() == [TINY["hidden_size"], len(tuned.tokenizer)]

    cosine = check_vectors(out, tuned, 0.999 if quantize == "f16" else Q8_COSINE)
    if quantize == "q8_0":  # really quantised: not the f16 numbers
        assert cosine.min() < 0.999999
    card = (out / "README.md").read_text()
    assert "llama-server" in card and '"{s} is: "' in card and QUANTIZE_TEXT[quantize] in card


def test_gguf_base_keeps_its_metadata(tmp_path, monkeypatch):
    """A GGUF base (as the packaged models are): its keys and tokenizer are copied, and the
    merged tensors replace its own, name for name and shape for shape."""
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path / "cache"))
    hf_base = make_model(tmp_path / "hf", "llama")
    base = export(tmp_path / "base", "gguf", model=str(hf_base)) / GGUF_FILE
    assert source_gguf(str(base)) == base
    adapter = random_lora_adapter(tmp_path / "adapter", base)
    tuned = Embedder.from_pretrained(adapter=adapter, dtype="fp32")
    out = export(tmp_path / "tuned", "gguf", quantize="q8_0", adapter=adapter)

    source, written = gguf.GGUFReader(base), gguf.GGUFReader(out / GGUF_FILE)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "llama.rope.freq_base"):
        assert field(written, key) == field(source, key)
    assert field(written, "general.name") == "tuned"
    assert layout(written) == layout(source)
    check_vectors(out, tuned, Q8_COSINE)


def test_refusals(tmp_path, tiny_models, adapters):
    phi = str(tiny_models["phi"])
    with pytest.raises(ExportError, match="writes llama, qwen2, gemma3_text models.*'phi'"):
        export(tmp_path / "phi", "gguf", model=phi)
    with pytest.raises(ExportError, match="query_pre_attn_scalar=256"):
        export(tmp_path / "gemma3", "gguf", model=str(tiny_models["gemma3"]))
    adapter = adapters("llama")
    with pytest.raises(ExportError, match="--attention bidirectional"):
        export(tmp_path / "bi", "gguf", adapter=adapter, attention="bidirectional")
    with pytest.raises(ExportError, match=r"--quantize f16\|q8_0 applies to --format gguf"):
        export(tmp_path / "onnx", "onnx", quantize="q8_0", adapter=adapter)
    with pytest.raises(ExportError, match=r"--quantize int8\|int8-block applies to --format onnx"):
        export(tmp_path / "int8", "gguf", quantize="int8", adapter=adapter)
    assert not any(tmp_path.iterdir())


def test_spm_tokenizer_is_refused(tmp_path, tiny_models):
    """A sentencepiece-style vocabulary (byte fallback) is not written from transformers."""
    folder = make_tiny_model(tmp_path / "llama", "llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    backend = tokenizer.backend_tokenizer
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>").save_pretrained(folder)
    with pytest.raises(ExportError, match="byte-level BPE vocabularies.*Sequence decoder"):
        export(tmp_path / "out", "gguf", model=str(folder))


def test_cli_options(tmp_path, adapters):
    hints = typing.get_type_hints(ExportOptions)
    assert "gguf" in literal_choices(hints["format"])
    assert {"f16", "q8_0"} <= set(literal_choices(hints["quantize"]))
    out = tmp_path / "cli"
    main(["export", "--adapter", adapters("qwen2"), "--output", str(out), "--format", "gguf",
          "--quantize", "q8_0"])  # fmt: skip
    assert field(gguf.GGUFReader(out / GGUF_FILE), "general.file_type") == 7  # MOSTLY_Q8_0


@pytest.mark.integration
def test_packaged_smollm2_with_an_adapter(tmp_path):
    """The packaged SmolLM2 (a Q4_1 GGUF): the export keeps its tokenizer and tensor layout,
    adds no BOS (SmolLM2's tokenizer adds none) and gives lmembed's vectors back."""
    source = require_packaged_model("smollm2-135m")
    adapter = random_lora_adapter(tmp_path / "adapter", "smollm2-135m")
    tuned = Embedder.from_pretrained(adapter=adapter, dtype="fp32")
    out = export(tmp_path / "gguf", "gguf", adapter=adapter)

    original, written = gguf.GGUFReader(source), gguf.GGUFReader(out / GGUF_FILE)
    assert field(written, "llama.pooling_type") == gguf.PoolingType.LAST
    assert field(written, "tokenizer.ggml.add_eos_token") is True
    assert field(written, "tokenizer.ggml.add_bos_token") is False
    assert field(written, "tokenizer.ggml.pre") == field(original, "tokenizer.ggml.pre")
    assert layout(written) == layout(original)
    check_vectors(out, tuned, 0.999)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_gguf_cache_holds_what_from_pretrained_loads(arch, tmp_path, monkeypatch):
    """The safetensors copy of a GGUF (written without building a model) has the tensors,
    names and config that ``AutoModel.from_pretrained(gguf_file=...)`` loads, bit for bit."""
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path / "cache"))
    out = export(tmp_path / "gguf", "gguf", quantize="q8_0", model=str(make_model(tmp_path, arch)))
    cache = gguf_cache(out / GGUF_FILE)

    model, _ = load_gguf(out)
    expected = model.state_dict()
    written = load_file(cache / "model.safetensors")
    assert sorted(written) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(written[name], tensor), name
    converted = AutoConfig.for_model(**_without_quantization(model.config.to_dict()))
    assert without_path(AutoConfig.from_pretrained(cache)) == without_path(converted)


def without_path(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16])
def test_dequantising_by_rows_gives_gguf_values(qtype):
    """The conversion's row-chunked dequantisation (chunks of 7 rows here, uneven at the end)
    equals gguf's whole-tensor one."""
    weights = np.random.default_rng(0).standard_normal((45, 64)).astype(np.float32)
    data = gguf.quantize(weights, qtype)
    whole = gguf.dequantize(data, qtype)
    assert np.array_equal(dequantise_by_rows(data, qtype, rows=7), whole)
