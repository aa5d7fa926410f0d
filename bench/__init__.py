"""lmembed's benchmarks, run from the repository root as ``python -m bench.NAME``.

Each benchmark (``bench_*.py``) exposes ``parser()``, ``measure(args) -> dict`` (runs the
measurement and returns what goes to ``bench/results/<name>.json``) and
``render(results) -> str`` (the section of ``docs/benchmarks.md`` those results make,
from them alone); its ``main`` measures, then ``common.publish`` writes the JSON and
replaces the section. Rendering a saved JSON again gives its published section byte for
byte (tests/test_bench_render.py). ``bench_mine`` writes results only (no ``render``):
docs/retrieval.md quotes its figures by hand.

Shared code: ``common`` (environment, worker processes, statistics, docs), ``systems``
(the trainers compared), ``packing`` and ``lora_candidates`` (measured training-step
candidates), ``st_backend_worker.py`` (run by path with another environment's Python).

``bench.diagnostics`` holds one-off checks that verify or explain one thing once and
write no docs section (the GPU check, the OpenVINO per-token agreement).

This file imports nothing, so another environment (the OpenVINO one) can run a module of
the package.
"""
