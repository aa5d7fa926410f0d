#!/usr/bin/env bash
# The environment bench_gguf.py runs llama.cpp in: llama-cpp-python alone (PyPI has only its
# source, so pip builds llama.cpp with cmake: a long compile on a small machine), nothing of
# lmembed's, so tokenization, the graph and pooling are all llama.cpp's. Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

folder=.venv-llamacpp
if [ -x "$folder/bin/python" ] && "$folder/bin/python" -c 'import llama_cpp' 2>/dev/null; then
    exit 0
fi
python3 -m venv "$folder"
"$folder/bin/pip" install --quiet --upgrade pip
CMAKE_ARGS="-DGGML_NATIVE=ON" "$folder/bin/pip" install --quiet llama-cpp-python==0.3.36
