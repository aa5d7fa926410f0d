"""OpenVINO: the exported graph compiled for the CPU plugin, behind the same ``Embedder``.

``export(kind="openvino")`` converts the checked ONNX graph to OpenVINO IR
(``openvino_model.xml``/``.bin``, fp32 weights kept as they are); the backend also runs an
ONNX export folder directly. Inference precision is pinned to f32 unless the user asks
for another (``--runtime-precision``, not ``--dtype``): on CPUs with bf16 units OpenVINO
would otherwise compute in bf16 and the vectors would drift from ``Embedder.encode``
without anyone having chosen it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmembed.backends.onnx import ONNX_FILE, RunFn, RuntimeEmbedder, runtime_embedder
from lmembed.model.spec import EmbeddingSpec

IR_FILE = "openvino_model.xml"
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}  # lmembed dtype -> OpenVINO's


def openvino_run(path: Path, dtype: str = "fp32") -> RunFn:
    """A compiled CPU model over ``path`` (IR or ONNX) computing in ``dtype``, as a feed ->
    hidden states function."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[dtype]}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.array(request.infer(feed)[output], copy=True)

    return run


def graph_file(folder: Path) -> Path:
    """The IR if the folder has one (faster to compile), else the ONNX graph."""
    return folder / IR_FILE if (folder / IR_FILE).is_file() else folder / ONNX_FILE


def load_openvino(folder: Path, spec: EmbeddingSpec) -> RuntimeEmbedder:
    """The embedder of an ``onnx`` or ``openvino`` export folder, on OpenVINO, computing in
    ``spec.dtype`` (``load_encoder`` sets it to the runtime precision)."""
    return runtime_embedder(folder, spec, openvino_run(graph_file(folder), spec.dtype))


def convert_to_ir(onnx_path: Path, folder: Path) -> None:
    """Write ``folder/openvino_model.xml`` from an ONNX graph (weights not compressed)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / IR_FILE), compress_to_fp16=False)
