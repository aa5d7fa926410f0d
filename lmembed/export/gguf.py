"""``lmembed export --format gguf``: one GGUF file that llama.cpp and Ollama embed with.

The file holds the merged weights (LoRA folded in fp32, then stored as ``f16`` or
``q8_0``), the tokenizer, and the keys that make llama.cpp compute lmembed's embedding by
itself: ``<arch>.pooling_type`` (last token, or mean), ``tokenizer.ggml.add_eos_token``
(EOS appended) and ``tokenizer.ggml.add_bos_token`` (BOS exactly when lmembed's tokenizer
adds it). llama.cpp has no prompt templates, so the template is recorded for the client
(``general.description`` and ``lmembed.prompt`` / ``lmembed.query_prompt`` /
``lmembed.document_prompt``), as is the token limit (``lmembed.max_length``).

Where the base model is itself a GGUF file (the packaged gemma-3-270m and smollm2-135m),
its metadata and tokenizer are copied as they are, since llama.cpp already reads them;
only the tensors are new, checked to match the source's names and shapes. A transformers
base gets its hyperparameters and its byte-level BPE vocabulary written here, as llama.cpp's
``convert_hf_to_gguf.py`` writes them. Either way the tensors take llama.cpp's layout, the
reverse of what transformers' GGUF loader undoes: Llama's rotary rows of q/k permuted,
Gemma-3's norm weights stored as ``1 + w``. Tensor names come from the ``gguf`` package's
own name maps.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from transformers import PretrainedConfig, PreTrainedModel
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lmembed.backends.errors import ExportError, GGUFQuantize
from lmembed.io import atomic_directory
from lmembed.model.embedder import Embedder
from lmembed.model.loading import resolve
from lmembed.model_card import prompt_roles

GGUF_FILE = "model.gguf"
POOLING = {"last": gguf.PoolingType.LAST, "mean": gguf.PoolingType.MEAN}
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
WEIGHT_TYPES = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16


@dataclass(frozen=True)
class Architecture:
    """A transformers architecture llama.cpp runs, and how its tensors differ there."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool = False  # llama.cpp's rotary layout of q/k rows (Llama)
    norm_shift: float = 0.0  # Gemma-3's RMSNorm scales by 1 + w, llama.cpp's by w

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


# Keyed by transformers' model_type (a GGUF base loads as gemma3_text).
ARCHITECTURES = {
    "llama": Architecture(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": Architecture(gguf.MODEL_ARCH.QWEN2),
    "gemma3_text": Architecture(gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0),
}


def write_gguf(
    embedder: Embedder,
    output: Path,
    quantize: GGUFQuantize,
    card: Callable[[Path], None],
) -> Path:
    """Write ``embedder`` (fp32, LoRA merged) as ``output/model.gguf`` plus its card."""
    model = embedder.model
    architecture = architecture_of(model.config, embedder.spec.model)
    source = source_gguf(embedder.spec.model)
    reader = gguf.GGUFReader(source) if source is not None else None
    tensors = dict(_tensors(model, architecture))
    if reader is not None:
        _check_layout(tensors, reader, source)
    with atomic_directory(output) as tmp:
        writer = gguf.GGUFWriter(tmp / GGUF_FILE, architecture.name)
        _recipe(writer, embedder, output.name, quantize)
        if reader is not None:
            _copy_metadata(reader, writer)
        else:
            _hyperparameters(writer, model.config, architecture)
            _vocabulary(writer, embedder.tokenizer, model.config.vocab_size)
        for name, data in tensors.items():
            stored, kind = encode_tensor(name, data, quantize)
            writer.add_tensor(name, stored, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        card(tmp)
    return output


def architecture_of(config: PretrainedConfig, model: str) -> Architecture:
    """The llama.cpp architecture of ``config``, or an ExportError naming the model's."""
    found = ARCHITECTURES.get(config.model_type)
    if found is None:
        raise ExportError(
            f"--format gguf writes {', '.join(ARCHITECTURES)} models; {model} is a "
            f"{config.model_type!r} model (export it with --format merged instead)"
        )
    return found


def source_gguf(model: str) -> Path | None:
    """The GGUF file the base was read from (packaged models, ``.gguf`` paths), if any."""
    folder = resolve(model)
    record = Path(folder, "lmembed_source.json")
    if isinstance(folder, str) or not record.is_file():  # a hub id, or a transformers folder
        return None
    return Path(json.loads(record.read_text(encoding="utf-8"))["gguf"])


def description(embedder: Embedder) -> str:
    """What a llama.cpp user must do around the file: the prompt, which llama.cpp lacks."""
    spec = embedder.spec
    pooled = "last-token" if spec.pooling == "last" else "mean"
    eos = ", EOS appended to every text" if spec.append_eos else ""
    text = f"Text-embedding model made by lmembed: {pooled} pooling{eos}; cosine similarity."
    prompts = [f"{who} in {json.dumps(template)}" for who, template in prompt_roles(spec)]
    if not prompts:
        return f"{text} No prompt: embed texts as they are."
    return f"{text} Before embedding, wrap {'; '.join(prompts)} ({{s}} stands for the text)."


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether lmembed's tokenizer starts each text with BOS (Gemma's does, SmolLM2's not)."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _recipe(writer: gguf.GGUFWriter, embedder: Embedder, name: str, quantize: str) -> None:
    """The keys that make llama.cpp compute lmembed's embedding (written first: they win)."""
    spec = embedder.spec
    writer.add_name(name)
    writer.add_description(description(embedder))
    writer.add_file_type(FILE_TYPES[quantize])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_pooling_type(POOLING[spec.pooling])
    writer.add_add_bos_token(adds_bos(embedder.tokenizer))
    writer.add_add_eos_token(spec.append_eos)
    for key in ("prompt", "query_prompt", "document_prompt"):
        if getattr(spec, key) is not None:
            writer.add_string(f"lmembed.{key}", getattr(spec, key))
    writer.add_uint32("lmembed.max_length", spec.max_length)


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> None:
    """Every key of the source GGUF the export does not set itself (hyperparameters,
    tokenizer), with its own type; ``GGUF.*`` are the reader's view of the header."""
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in writer.kv_data[0]:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub)


def _hyperparameters(
    writer: gguf.GGUFWriter, config: PretrainedConfig, architecture: Architecture
) -> None:
    """The shape keys llama.cpp's ``convert_hf_to_gguf.py`` writes for these architectures."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = _rope(config)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope.get("full_attention", rope)["rope_theta"])
    if architecture.arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    if architecture.arch == gguf.MODEL_ARCH.GEMMA3:
        _gemma3(writer, config, head_dim, rope)


def _rope(config: PretrainedConfig) -> dict:
    """The rotary parameters (per layer type for Gemma-3); only plain RoPE is written."""
    rope = config.rope_parameters
    for params in rope.values() if "full_attention" in rope else [rope]:
        if params.get("rope_type", "default") != "default":
            raise ExportError(
                f"--format gguf writes plain RoPE; this model uses {params['rope_type']!r} "
                "scaling (export it with --format merged instead)"
            )
    return rope


def _gemma3(writer: gguf.GGUFWriter, config: PretrainedConfig, head_dim: int, rope: dict) -> None:
    """Sliding-window layers, and the attention scale llama.cpp derives from ``head_dim``."""
    if config.query_pre_attn_scalar != head_dim:
        raise ExportError(
            f"llama.cpp scales Gemma-3 attention by 1/sqrt(head_dim={head_dim}); this model "
            f"uses query_pre_attn_scalar={config.query_pre_attn_scalar}"
        )
    sliding = [kind == "sliding_attention" for kind in config.layer_types]
    if any(sliding):
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern(sliding)
        writer.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])


def _vocabulary(
    writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, vocab_size: int
) -> None:
    """A byte-level BPE vocabulary as ``convert_hf_to_gguf.py``'s ``_set_vocab_gpt2`` writes
    it (ids the tokenizer lacks become unused ``[PAD<i>]`` rows); merges and special ids come
    from the ``gguf`` package's ``SpecialVocab``. BOS/EOS flags are the recipe's."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = backend["model"], backend.get("decoder") or {}
    if model["type"] != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ExportError(
            f"--format gguf writes byte-level BPE vocabularies; this tokenizer is a "
            f"{model['type']} model with a {decoder.get('type')} decoder (start from the "
            ".gguf of the base model to keep its vocabulary)"
        )
    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in reverse:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(reverse[index])
        if index in added:
            special = added[index].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(backend.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    special.add_special_token = {}  # the recipe decides BOS and EOS
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer(pre: dict | None) -> str:
    """llama.cpp's name for how the text is split before BPE: GPT-2's regex, or a split
    regex transformers' GGUF tokenizer table knows (Llama-3, Qwen2, ...)."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"]:
        pattern = steps[0]["pattern"].get("Regex")
        names = [name for name, split in GGUF_PRE_TOKENIZER_SPLITS.items() if split == pattern]
        if names:
            return names[0]
    raise ExportError(
        f"--format gguf cannot name this tokenizer's pre-tokenizer for llama.cpp ({kinds}); "
        "start from the .gguf of the base model to keep its tokenizer"
    )


def _tensors(
    model: PreTrainedModel, architecture: Architecture
) -> Iterator[tuple[str, np.ndarray]]:
    """The backbone's tensors under llama.cpp's names, in llama.cpp's layout, as fp32."""
    config = model.config
    names = gguf.get_tensor_name_map(architecture.arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        stem, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(stem)
        if name is None:
            raise ExportError(f"--format gguf has no llama.cpp tensor for {hf_name!r}")
        data = tensor.detach().float().cpu().numpy()
        if architecture.permute_qk and stem.endswith(("q_proj", "k_proj")):
            query = stem.endswith("q_proj")
            data = _permute(
                data, config.num_attention_heads if query else config.num_key_value_heads
            )
        if architecture.norm_shift and hf_name.endswith("norm.weight"):
            data = data + architecture.norm_shift
        yield f"{name}.{suffix}", data


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout: each head's two halves interleaved (``LlamaModel.permute``
    in convert_hf_to_gguf.py; transformers' ``LlamaTensorProcessor`` reverses it)."""
    shape = weights.shape
    return (
        weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def encode_tensor(
    name: str, data: np.ndarray, quantize: str
) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Norms, biases and other vectors in f32; matrices as ``quantize`` (q8_0 falls back to
    f16 for rows not a multiple of its 32-value blocks), as ``convert_hf_to_gguf.py`` does."""
    if data.ndim <= 1 or name.endswith("_norm.weight"):
        return data.astype(np.float32), F32
    kind = WEIGHT_TYPES[quantize]
    if kind != F16:
        try:
            return gguf.quants.quantize(data, kind), kind
        except gguf.QuantError:
            pass
    return data.astype(np.float16), F16


def _check_layout(tensors: dict[str, np.ndarray], reader: gguf.GGUFReader, source: Path) -> None:
    """The merged tensors must be the source GGUF's, name for name and shape for shape."""
    expected = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    actual = {name: tuple(data.shape) for name, data in tensors.items()}
    if expected != actual:
        differ = sorted(set(expected.items()) ^ set(actual.items()))[:6]
        raise ExportError(f"the merged tensors do not match {source}'s: {differ}")
