"""llama.cpp's side of ``bench_gguf.py``: embed texts with a GGUF file in llama-cpp-python.

Runs by path with the Python of ``.venv-llamacpp`` (``bench/gguf_llamacpp_env.sh``), which
holds llama-cpp-python and numpy and nothing of lmembed's, so tokenization, the graph and
pooling are all llama.cpp's. It imports only the standard library, numpy and llama_cpp.

    .venv-llamacpp/bin/python bench/gguf_llamacpp_worker.py PARAMS.json

PARAMS: ``gguf`` (the file), ``texts`` (a JSON list file, prompts already applied: llama.cpp
has none), ``vectors`` (where the ``.npy`` goes), ``threads``, ``token_texts`` (how many
texts' token ids to report), ``out`` (result JSON). The context sets no pooling, BOS or EOS:
what llama.cpp read from the file is reported.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np


def main(params: dict) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    texts = json.loads(Path(params["texts"]).read_text(encoding="utf-8"))
    began = time.perf_counter()
    llm = Llama(
        model_path=params["gguf"], embedding=True, n_ctx=512, n_batch=512, n_ubatch=512,
        n_threads=params["threads"], verbose=False,
    )  # fmt: skip
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    tokens = [llm.tokenize(text.encode("utf-8")) for text in texts[: params["token_texts"]]]
    vectors = np.asarray(llm.embed(texts), dtype=np.float32)
    np.save(params["vectors"], vectors)
    arch = llm.metadata["general.architecture"]
    keys = (f"{arch}.pooling_type", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token")
    return {
        "llama_cpp_python": version("llama-cpp-python"),
        "pooling_type": int(llama_cpp.llama_pooling_type(llm.ctx)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eos_id": int(llama_cpp.llama_vocab_eos(vocab)),
        "metadata": {key: llm.metadata.get(key) for key in keys},
        "tokens": tokens,
        "seconds": round(time.perf_counter() - began, 1),
    }


if __name__ == "__main__":
    params = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    Path(params["out"]).write_text(json.dumps(main(params)), encoding="utf-8")
