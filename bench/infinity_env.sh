#!/usr/bin/env bash
# The environment bench_serving.py runs infinity-emb in: its server with the torch and
# optimum (ONNX Runtime) engines, on the same CPU torch as lmembed. infinity-emb 0.0.78 needs
# numpy < 2 and sentence-transformers < 4, which do not install next to lmembed's stack.
# torch is named in the same install so pip keeps the CPU wheel (infinity accepts >= 2.2.1);
# the rest is pinned at what that install resolves to. optimum 1.x, which infinity's ONNX
# graph optimisation was written for, does not import with torch 2.13 (bench_serving.py
# runs that optimisation itself: bench/infinity_worker.py).
set -euo pipefail
cd "$(dirname "$0")/.."

folder=.venv-infinity
if [ ! -x "$folder/bin/python" ]; then
    python3 -m venv "$folder"
    "$folder/bin/pip" install --quiet --upgrade pip
fi
"$folder/bin/pip" install --quiet torch==2.13.0 "infinity-emb[server,torch,optimum]==0.0.78" \
    optimum==2.1.0 optimum-onnx==0.1.0 transformers==4.57.6 sentence-transformers==3.4.1
