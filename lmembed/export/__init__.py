"""Export a trained embedder for other tools: sentence-transformers, merged weights, adapter.

* ``sentence-transformers``: a folder that ``SentenceTransformer(path)`` loads with no
  lmembed installed (``lmembed.export.sentence_transformers_folder``).
* ``merged``: a plain transformers folder (safetensors, LoRA merged) plus ``lmembed.json``,
  so ``Embedder.from_pretrained(path)`` restores the same embedding function.
* ``adapter``: the adapter files alone (peft weights, its config and ``lmembed.json``).
* ``onnx`` / ``openvino``: the merged backbone as an fp32 graph (``model.onnx``, or OpenVINO
  IR), optionally with int8 weights (``quantize="int8"``), plus the tokenizer, the config and
  ``lmembed.json`` marked with the backend; ``lmembed.backends.load_encoder`` runs it with
  ``Embedder``'s own tokenization and pooling (see ``lmembed.backends.onnx``).
* ``gguf``: one ``model.gguf`` (merged weights as ``f16`` or ``q8_0``, the tokenizer, and the
  pooling/BOS/EOS keys) that llama.cpp and Ollama embed with (``lmembed.export.gguf``).

Every format gets a model card (``README.md``, ``lmembed.model_card``): the base model, the
embedding recipe, the training run's options, data and evaluations, ``results`` files'
scores, and how to use the folder.
"""

from __future__ import annotations

import shutil
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lmembed.backends.errors import ExportError, Quantize, check_causal, check_quantize
from lmembed.backends.runtime_export import RUNTIME_FORMATS, export_runtime
from lmembed.export.gguf import write_gguf
from lmembed.export.sentence_transformers_folder import (
    st_prompts,
    write_sentence_transformers,
)
from lmembed.io import atomic_directory, atomic_write_json
from lmembed.model.embedder import Embedder
from lmembed.model.resolve import resolve_spec
from lmembed.model.spec import DTYPES, SPEC_FILE, EmbeddingSpec
from lmembed.model_card import origin, read_results, write_card

ExportFormat = Literal["sentence-transformers", "merged", "adapter", "onnx", "openvino", "gguf"]
FORMATS: tuple[str, ...] = typing.get_args(ExportFormat)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", SPEC_FILE)


def export(
    output: str | Path,
    kind: ExportFormat = "sentence-transformers",
    overwrite: bool = False,
    quantize: Quantize | None = None,
    normalize: bool = True,
    results: Sequence[str | Path] = (),
    **spec_options: Any,
) -> Path:
    """Write the embedder ``spec_options`` describe to ``output`` as ``kind``; returns it.

    ``spec_options`` are ``EmbeddingSpec`` fields (``model``, ``adapter``, ...), resolved
    like every command's (``resolve_spec``). ``dtype`` is the dtype of the saved weights
    (default: the adapter's training dtype); LoRA is merged in fp32 first so the cast
    rounds once. An existing non-empty ``output`` is replaced only with ``overwrite``
    (it could be the training run itself). ``onnx``/``openvino`` graphs compute in fp32
    whatever ``dtype`` says; ``quantize`` stores their weights in int8 (``Quantize``).
    ``gguf`` stores its weights as ``quantize`` ``f16`` (the default) or ``q8_0``.
    ``normalize`` (sentence-transformers): end with a Normalize module, so ``encode``
    returns unit vectors as ``lmembed encode`` and the server do by default.
    ``results``: ``lmembed eval --output`` files whose scores the model card reports.
    """
    if kind not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {kind!r}")
    check_quantize(kind, quantize)
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    for path in results:
        read_results(path)  # fail before loading the model
    if kind == "adapter":
        adapter, model = spec_options.get("adapter"), spec_options.get("model")
        return _copy_adapter(adapter, model, output, results)
    spec = resolve_spec(spec_options)
    if kind in RUNTIME_FORMATS:

        def card(folder: Path, graph_spec: EmbeddingSpec) -> None:
            _write_card(folder, graph_spec, kind, results, quantize=quantize)

        return export_runtime(spec, output, kind, quantize, card)
    if kind in ("sentence-transformers", "gguf"):
        check_causal(spec, kind)
    if kind == "sentence-transformers":
        st_prompts(spec)  # fail before loading the model
    embedder = Embedder.from_spec(spec.replace(dtype="fp32"))  # merges LoRA in fp32
    if kind == "gguf":
        weights = quantize or "f16"

        def gguf_card(folder: Path) -> None:
            _write_card(folder, spec, kind, results, quantize=weights)

        return write_gguf(embedder, output, weights, gguf_card)
    embedder.model.to(DTYPES[spec.dtype])
    embedder.spec = spec
    if kind == "merged":
        return _write_merged(embedder, output, results)

    def card(folder: Path, st_spec: EmbeddingSpec) -> None:
        _write_card(folder, st_spec, "sentence-transformers", results)

    return write_sentence_transformers(embedder, output, normalize, card)


def _copy_adapter(
    adapter: str | Path | None, model: str | None, output: Path, results: Sequence[str | Path]
) -> Path:
    """The adapter's own files (not a run's checkpoint/ and logs); ``model`` re-points it."""
    if adapter is None:
        raise ExportError(
            "--format adapter needs --adapter DIR (a folder written by lmembed train)"
        )
    source = Path(adapter)
    spec = EmbeddingSpec.load(source)
    files = [source / name for name in ADAPTER_FILES if (source / name).is_file()]
    if not any(f.name.startswith("adapter_model") for f in files):
        raise ExportError(f"{source} has no adapter_model.safetensors: not a trained adapter")
    if model is not None:
        spec = spec.replace(model=model)
    with atomic_directory(output) as tmp:
        for path in files:
            shutil.copy2(path, tmp / path.name)
        if model is not None:
            spec.save(tmp)
        write_card(tmp, spec, run=source, results=results, export_format="adapter")
    return output


def _write_card(
    folder: Path, spec: EmbeddingSpec, kind: str, results: Sequence[str | Path], **options: Any
) -> None:
    """The card of ``spec`` (the model exported, not the folder's own record of it)."""
    write_card(folder, spec, run=origin(spec)[1], results=results, export_format=kind, **options)


def _write_merged(embedder: Embedder, output: Path, results: Sequence[str | Path]) -> Path:
    """Transformers folder + the spec; the spec's ``model`` is the folder itself."""
    source = {"model": embedder.spec.model, "adapter": embedder.spec.adapter}
    spec = embedder.spec.replace(model=str(output.resolve()), adapter=None)
    with atomic_directory(output) as tmp:
        embedder.model.save_pretrained(tmp)
        embedder.tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / SPEC_FILE, {**spec.to_dict(), "merged_from": source})
        _write_card(tmp, embedder.spec, "merged", results)
    return output
