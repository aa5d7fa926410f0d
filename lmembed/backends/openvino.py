"""OpenVINO: the exported graph compiled for the CPU plugin, behind the same ``Embedder``.

``export(kind="openvino")`` converts the checked ONNX graph to OpenVINO IR
(``openvino_model.xml``/``.bin``, fp32 weights kept as they are); the backend also runs an
ONNX export folder directly. Inference precision is pinned to f32: on CPUs with bf16
units OpenVINO would otherwise compute in bf16 and the vectors would drift from
``Embedder.encode``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmembed.backends.onnx import ONNX_FILE, RunFn, RuntimeEmbedder, runtime_embedder
from lmembed.model.spec import EmbeddingSpec

IR_FILE = "openvino_model.xml"
CPU_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def openvino_run(path: Path) -> RunFn:
    """A compiled CPU model over ``path`` (IR or ONNX) as a feed -> hidden states function."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", CPU_CONFIG)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.array(request.infer(feed)[output], copy=True)

    return run


def graph_file(folder: Path) -> Path:
    """The IR if the folder has one (faster to compile), else the ONNX graph."""
    return folder / IR_FILE if (folder / IR_FILE).is_file() else folder / ONNX_FILE


def load_openvino(folder: Path, spec: EmbeddingSpec) -> RuntimeEmbedder:
    """The embedder of an ``onnx`` or ``openvino`` export folder, on OpenVINO."""
    return runtime_embedder(folder, spec, openvino_run(graph_file(folder)))


def convert_to_ir(onnx_path: Path, folder: Path) -> None:
    """Write ``folder/openvino_model.xml`` from an ONNX graph (weights not compressed)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / IR_FILE), compress_to_fp16=False)
