"""One sentence-transformers backend in its own environment, for ``bench_backends.py``.

sentence-transformers' ``backend="onnx"`` needs optimum-onnx (transformers < 4.58) and
``backend="openvino"`` needs optimum-intel (transformers < 5); neither installs next to
lmembed's transformers 5, so ``bench/st_backends_env.sh`` builds one environment for each
and ``bench_backends.py`` runs this script, by path, with that environment's Python. It
imports only the standard library, numpy and sentence-transformers (no ``bench`` module).

    python bench/st_backend_worker.py prepare PARAMS.json  # export (and int8), save, report
    python bench/st_backend_worker.py encode PARAMS.json   # load the saved export, time encode

PARAMS: ``folder`` (a sentence-transformers model), ``saved`` (where the export goes),
``backend``, ``int8`` (sentence-transformers' own dynamic int8 ONNX helper), ``texts``
(a JSON list file), ``batch_size``, ``max_length``, ``ov_config`` (OpenVINO compile
options, ``{}`` for its defaults), ``out`` (result JSON; vectors beside it as ``.npy``). For
OpenVINO the result names the precision the compiled model computes in.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

INT8_ONNX = "onnx/model_qint8_avx512_vnni.onnx"


def load(params: dict, folder: str):
    from sentence_transformers import SentenceTransformer

    kwargs = {"file_name": INT8_ONNX} if params["int8"] and folder == params["saved"] else {}
    if params["backend"] == "openvino":
        kwargs["ov_config"] = params["ov_config"]
    model = SentenceTransformer(
        folder, device="cpu", backend=params["backend"], model_kwargs=kwargs
    )
    model.max_seq_length = params["max_length"]
    return model


def prepare(params: dict) -> dict:
    """Export with sentence-transformers' own code (and int8 helper); save it to ``saved``."""
    began = time.perf_counter()
    model = load(params, params["folder"])
    model.save(params["saved"])
    if params["int8"]:
        if params["backend"] != "onnx":
            raise SystemExit("int8: only the ONNX dynamic helper runs offline")
        from sentence_transformers import export_dynamic_quantized_onnx_model

        export_dynamic_quantized_onnx_model(model, "avx512_vnni", params["saved"])
    versions = {}
    for name in ("sentence-transformers", "transformers", "optimum-onnx", "optimum-intel",
                 "onnxruntime", "openvino", "torch"):  # fmt: skip
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return {"export_s": round(time.perf_counter() - began, 1), "versions": versions}


def encode(params: dict) -> dict:
    """Seconds of one ``encode`` over the texts, after loading and one warm-up batch."""
    model = load(params, params["saved"])
    texts = json.loads(Path(params["texts"]).read_text(encoding="utf-8"))
    batch = params["batch_size"]
    model.encode(texts[:batch], batch_size=batch)
    began = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch)
    seconds = time.perf_counter() - began
    np.save(Path(params["out"]).with_suffix(".npy"), np.asarray(vectors, dtype=np.float32))
    result = {"seconds": seconds}
    if params["backend"] == "openvino":  # optimum-intel keeps the CompiledModel as ``request``
        hint = model[0].auto_model.request.get_property("INFERENCE_PRECISION_HINT")
        result["precision"] = str(hint.get_type_name())
    return result


if __name__ == "__main__":
    mode, params_file = sys.argv[1], sys.argv[2]
    params = json.loads(Path(params_file).read_text(encoding="utf-8"))
    result = {"prepare": prepare, "encode": encode}[mode](params)
    Path(params["out"]).write_text(json.dumps(result), encoding="utf-8")
