"""Inference backends: the same embedding function on torch, ONNX Runtime or OpenVINO.

``load_encoder`` returns an object with ``Embedder``'s inference interface (``encode``,
``spec``, ``dimension``), so evaluation, retrieval, the server and the corpus encoder take
any backend unchanged. For ``onnx``/``openvino`` the model is either a folder written by
``lmembed export --format onnx|openvino`` or anything ``Embedder`` loads (a model, plus an
adapter): that is exported once, checked against torch, into ``cache_root()/exports``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmembed.backends.errors import ExportError
from lmembed.backends.runtime_export import export_runtime
from lmembed.io import cache_root, folder_fingerprint
from lmembed.model.embedder import Embedder
from lmembed.model.resolve import resolve_spec
from lmembed.model.spec import SPEC_FILE, EmbeddingSpec, resolve_dtype
from lmembed.options import option
from lmembed.system import accelerator

logger = logging.getLogger("lmembed")

Backend = Literal["torch", "onnx", "openvino"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
RuntimePrecision = Literal["fp32", "bf16", "auto"]
RUNTIME_PRECISIONS: tuple[str, ...] = typing.get_args(RuntimePrecision)


@dataclass
class BackendOptions:
    """Which engine runs the backbone (tokenization and pooling are always lmembed's)."""

    backend: Backend = option(
        "torch",
        "inference engine: torch, onnx (ONNX Runtime, fp32 or an int8 export) or openvino "
        "(fp32, or bf16 with --runtime-precision); a model that is not an `lmembed export "
        "--format onnx|openvino` folder is exported once into the cache",
    )
    runtime_precision: RuntimePrecision = option(
        "fp32",
        "--backend openvino: the precision OpenVINO computes the fp32 graph in; bf16 runs on "
        "AMX/AVX512-BF16 units (the fastest CPU path there; vectors drift from fp32 as "
        "torch's bf16 does); auto: bf16 where the CPU has bf16 units, else fp32. --backend "
        "onnx computes in fp32 only; --backend torch computes in --dtype",
    )
    merge_lora: bool = option(
        True,
        "torch: fold the adapter into fp32 base weights before inference (the same vectors "
        "without LoRA's extra matmuls; bf16/fp16 keep it separate, as trained)",
    )


def load_encoder(
    spec_options: dict[str, Any],
    backend: Backend = "torch",
    merge_lora: bool = True,
    runtime_precision: RuntimePrecision = "fp32",
) -> Embedder:
    """The embedder ``spec_options`` (``EmbeddingSpec`` fields) describe, on ``backend``
    (``merge_lora``: see ``Embedder.from_spec``; exports are merged already), an ONNX or
    OpenVINO runtime computing in ``runtime_precision`` (see ``compute_precision``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    precision = compute_precision(backend, runtime_precision)
    exported = export_backend(spec_options.get("model"))
    if backend == "torch":
        if exported is not None and spec_options.get("adapter") is None:
            raise ExportError(
                f"{spec_options['model']} is an {exported} export (no torch weights); "
                f"use --backend {'onnx' if exported == 'onnx' else 'openvino'}"
            )
        return Embedder.from_pretrained(device=accelerator(), merge=merge_lora, **spec_options)
    spec = resolve_spec(spec_options)
    folder = Path(spec.model) if exported and spec.adapter is None else cached_export(spec)
    if backend == "onnx" and export_backend(str(folder)) == "openvino":
        raise ExportError(f"{folder} holds OpenVINO IR only; use --backend openvino")
    runtime_spec = spec.replace(model=str(folder), adapter=None, dtype=precision)
    if backend == "onnx":
        from lmembed.backends.onnx import load_onnx

        return load_onnx(folder, runtime_spec)
    from lmembed.backends.openvino import load_openvino

    return load_openvino(folder, runtime_spec)


def compute_precision(backend: Backend, runtime_precision: str) -> str:
    """The dtype ``backend``'s runtime computes the fp32 graph in (``"auto"`` resolved);
    ``--dtype`` does not change it. OpenVINO computes in ``runtime_precision`` (bf16 runs on
    AMX/AVX512-BF16 units; the vectors drift from fp32 as torch's bf16 does); ONNX
    Runtime's CPU kernels have fp32 only; torch computes in ``--dtype``, so it takes only
    the default."""
    if runtime_precision not in RUNTIME_PRECISIONS:
        raise ValueError(
            f"runtime_precision must be one of {RUNTIME_PRECISIONS}, got {runtime_precision!r}"
        )
    if backend == "torch" and runtime_precision != "fp32":
        raise ValueError(
            f"--runtime-precision {runtime_precision} applies to --backend openvino; "
            "--backend torch computes in --dtype (e.g. --dtype bf16)"
        )
    if backend == "onnx" and runtime_precision != "fp32":
        raise ExportError(
            f"--backend onnx computes in fp32 (or an int8 export), not --runtime-precision "
            f"{runtime_precision}; use --backend openvino --runtime-precision "
            f"{runtime_precision}, or --backend torch --dtype bf16"
        )
    return resolve_dtype(runtime_precision)


def export_backend(model: str | None) -> str | None:
    """``"onnx"``/``"openvino"`` when ``model`` is such an export folder, else ``None``."""
    path = Path(model) / SPEC_FILE if model else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("backend")


def cached_export(spec: EmbeddingSpec) -> Path:
    """An fp32 ONNX export of ``spec``'s weights (model + adapter), made on first use.

    Keyed by what determines the weights, including the files' sizes and mtimes: an
    adapter retrained in place gets a new export. Prompts, pooling and length are applied
    at run time, so one export serves them all.
    """
    weights = {
        "model": spec.model,
        "adapter": spec.adapter,
        "trust_remote_code": spec.trust_remote_code,
        "files": [folder_fingerprint(spec.model), folder_fingerprint(spec.adapter)],
    }
    key = hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root() / "exports" / f"onnx-{key}"
    if export_backend(str(folder)) is None:
        logger.info("exporting %s to ONNX in %s (once; later loads reuse it)", spec.model, folder)
        options = {k: v for k, v in weights.items() if k != "files"}
        export_runtime(resolve_spec(options), folder)
    return folder


__all__ = [
    "BACKENDS",
    "RUNTIME_PRECISIONS",
    "Backend",
    "BackendOptions",
    "RuntimePrecision",
    "export_backend",
    "load_encoder",
]
