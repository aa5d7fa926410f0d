#!/usr/bin/env bash
# The environments bench_backends.py runs sentence-transformers' ONNX and OpenVINO backends
# in: optimum-onnx needs transformers < 4.58 and optimum-intel transformers < 5 (its gemma3 export allows at most 5.0), neither
# of which installs next to lmembed's transformers 5. Each gets the same CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."

make_env() {
    local folder=$1
    shift
    [ -x "$folder/bin/python" ] && return
    python3 -m venv "$folder"
    "$folder/bin/pip" install --quiet --upgrade pip
    "$folder/bin/pip" install --quiet torch==2.13.0 sentence-transformers "$@"
}

make_env .venv-st-onnx "transformers<4.58" "optimum-onnx[onnxruntime]==0.1.0"
make_env .venv-st-openvino "transformers<5" "optimum-intel[openvino]==2.2.0"
# optimum-intel pulls a torchvision built for another torch; text models never import it.
.venv-st-openvino/bin/pip uninstall --quiet --yes torchvision || true
