"""One-off diagnostics: each checks or explains one thing once, prints its findings (and
may write a JSON to ``$OUT``), and writes no docs/benchmarks.md section. Run from the
repository root as ``python -m bench.diagnostics.NAME``.

* ``gpu_check``: ``lmembed train`` on a random Gemma-3-270M, plain and with GradCache, and
  CPU/GPU parity of fp32 vectors, on a lent GPU (``--smoke`` anywhere).
* ``st_openvino_tokens``: per-token agreement of sentence-transformers' OpenVINO export
  with its torch model (runs in the OpenVINO environment).
"""
