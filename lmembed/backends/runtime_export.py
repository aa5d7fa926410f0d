"""Write a runtime folder: the checked ONNX graph (or OpenVINO IR), tokenizer, config and
the spec marked with its backend. ``lmembed export --format onnx|openvino`` and the cached
export behind ``--backend onnx|openvino`` both come here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from lmembed.backends.errors import Quantize, check_causal
from lmembed.backends.onnx import ONNX_FILE, export_onnx, onnx_metadata
from lmembed.io import atomic_directory, atomic_write_json
from lmembed.model.embedder import Embedder
from lmembed.model.spec import SPEC_FILE, EmbeddingSpec

logger = logging.getLogger("lmembed")
RUNTIME_FORMATS = ("onnx", "openvino")


def export_runtime(
    spec: EmbeddingSpec,
    output: Path,
    kind: str = "onnx",
    quantize: Quantize | None = None,
    finish: Callable[[Path, EmbeddingSpec], None] | None = None,
) -> Path:
    """Merge ``spec``'s LoRA in fp32 and write its graph to ``output`` (replaced whole).

    Graphs compute in fp32 whatever ``spec.dtype`` says; ``quantize`` stores int8 weights.
    ``finish(folder, spec)`` adds files (a model card) before the folder is committed.
    """
    check_causal(spec, kind)
    spec = spec.replace(dtype="fp32")
    embedder = Embedder.from_spec(spec)
    source = {"model": spec.model, "adapter": spec.adapter}
    marked = spec.replace(model=str(output.resolve()), adapter=None)
    with atomic_directory(output) as tmp:
        agreement = export_onnx(embedder, tmp, quantize)
        if kind == "openvino":
            from lmembed.backends.openvino import convert_to_ir

            convert_to_ir(tmp / ONNX_FILE, tmp)
            (tmp / ONNX_FILE).unlink()
        embedder.model.config.save_pretrained(tmp)
        embedder.tokenizer.save_pretrained(tmp)
        graph = onnx_metadata(quantize, agreement)
        marker = {"backend": kind, "graph": graph, "exported_from": source}
        atomic_write_json(tmp / SPEC_FILE, {**marked.to_dict(), **marker})
        if finish is not None:
            finish(tmp, spec)
    logger.info("%s export: lowest token cosine against torch %.6f", kind, agreement)
    return output
