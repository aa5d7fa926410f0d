"""Runs in ``.venv-infinity``: infinity-emb's own ONNX graph optimisation, done ahead of time.

infinity-emb 0.0.78 optimises an ONNX graph when it loads it (``optimize_model`` in
``infinity_emb/transformer/utils_optimum.py``: ``ORTOptimizer`` at level 99 for the CPU,
fp32) and keeps the result under ``$HF_HUB_CACHE/infinity_onnx/<provider>/<model id>``; a
later start loads it from there. With optimum 2 that call fails (its ``OptimizationConfig``
lost the ``optimize_with_onnxruntime_only`` argument) and infinity serves the graph
unoptimised; optimum 1.x does not import with torch 2.13. This script makes the same call
with the argument's optimum 2 spelling (``enable_transformers_specific_optimizations``, on
by default) and writes the result where infinity looks, so the benchmark measures infinity
as it was meant to run. A model type ``ORTOptimizer`` does not support stays unoptimised,
as it would in infinity.

    .venv-infinity/bin/python bench/infinity_worker.py MODEL_FOLDER SAVE_DIR

prints one JSON line: ``{"optimized": bool, "error": str | null}``.
"""

from __future__ import annotations

import json
import sys

PROVIDER = "CPUExecutionProvider"


def optimize(folder: str, save_dir: str) -> dict:
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    model = ORTModelForFeatureExtraction.from_pretrained(
        folder, provider=PROVIDER, file_name="model.onnx"
    )
    config = OptimizationConfig(optimization_level=99, optimize_for_gpu=False, fp16=False)
    try:
        ORTOptimizer.from_pretrained(model).optimize(config, save_dir, one_external_file=True)
    except Exception as error:  # infinity catches the same and serves the graph as it is
        return {"optimized": False, "error": f"{type(error).__name__}: {error}"}
    return {"optimized": True, "error": None}


if __name__ == "__main__":
    print(json.dumps(optimize(sys.argv[1], sys.argv[2])))
