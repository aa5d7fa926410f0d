"""Every benchmark section of docs/benchmarks.md is its script's ``render`` of the saved
results: rendering each bench/results JSON again leaves the page byte for byte unchanged.

No model runs: ``render`` reads the results alone. Every benchmark module exposes
``parser``, ``measure`` and ``render``, and none of them runs anything on import.
"""

from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from bench.common import DOC, RESULTS, load_result, with_section  # noqa: E402

# (module, its results in bench/results, the docs/benchmarks.md heading they render)
SECTIONS = [
    ("bench_backends", "backends", "CPU inference backends"),
    ("bench_corpus_encode", "corpus_encode", "Corpus encoding"),
    ("bench_corpus_encode", "corpus_encode_paired", "Corpus encoding: paired throughput"),
    ("bench_data", "data", "Training data from disk"),
    ("bench_encode", "encode", "Encoding throughput"),
    ("bench_gguf", "gguf", "GGUF in llama.cpp"),
    ("bench_gradcache", "gradcache", "GradCache and multi-process training"),
    ("bench_memory", "memory", "Memory"),
    ("bench_merge", "merge", "LoRA merged for inference"),
    ("bench_quality", "quality-bf16", "Quality at equal budget (bf16)"),
    ("bench_quality", "quality-fp32", "Quality at equal budget (fp32)"),
    ("bench_roofline", "roofline", "Roofline"),
    ("bench_scaling", "scaling", "Scaling"),
    ("bench_server", ("server", "server_load"), "Embeddings server"),
    ("bench_serving", "serving", "Serving: lmembed against infinity-emb"),
    ("bench_sizes", "sizes", "Quality against size"),
    ("bench_step_memory", "step_memory", "Training memory over steps"),
    ("bench_step_options", "step_options", "Training-step candidates"),
    ("bench_train", "train", "Training throughput and memory"),
]
# Sections whose prose was rewritten by hand after their run, in ways the current ``render``
# cannot know from the results; their figures (tables, bullets, environment) must still be
# the render's. Rerunning the benchmark regenerates the section: then drop it from here.
PROSE_EDITED = {
    "Training throughput and memory": "train.json (2026-11-28) predates the reference recipe "
    "of 2026-11-30: its `reference` appended EOS (today's `reference+eos`), which the "
    "section's prose says by hand; `make bench` regenerates it",
}
# Results with no section of docs/benchmarks.md: bench_mine's are quoted in docs/retrieval.md.
NO_SECTION = {"mine", "mine-3k", "mine-search"}
BENCHMARKS = sorted(path.stem for path in (ROOT / "bench").glob("bench_*.py"))


def section(page: str, heading: str) -> str:
    """The ``## heading`` section of a page, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", page, re.MULTILINE | re.DOTALL)
    assert match, heading
    return match.group(0)


def saved(names: str | tuple[str, ...]) -> dict:
    """One results file, or several by name (the server's section reads two)."""
    if isinstance(names, str):
        return load_result(names)
    return {name: load_result(name) for name in names}


@pytest.mark.parametrize(
    ("module", "names", "heading"), SECTIONS, ids=[f"{m}:{h}" for m, _, h in SECTIONS]
)
def test_rendering_the_saved_results_gives_the_published_section(module, names, heading):
    render = importlib.import_module(f"bench.{module}").render
    page = DOC.read_text(encoding="utf-8")
    rendered = with_section(page, heading, render(saved(names)))
    if heading in PROSE_EDITED:
        assert rendered != page, f"{heading} renders as published now: drop it from PROSE_EDITED"
        published = section(page, heading).splitlines()
        figures = [line for line in section(rendered, heading).splitlines() if line[:1] in "|-"]
        assert figures and all(line in published for line in figures), PROSE_EDITED[heading]
        return
    assert section(rendered, heading) == section(page, heading)
    assert rendered == page


def test_every_results_file_is_rendered_or_known_to_have_no_section():
    rendered = {
        n for _, names, _ in SECTIONS for n in (names if isinstance(names, tuple) else [names])
    }
    assert {path.stem for path in RESULTS.glob("*.json")} == rendered | NO_SECTION


def test_the_table_is_what_the_benchmarks_write():
    """Each (results, heading) above is the one its module's ``main`` publishes."""
    modules = {m: importlib.import_module(f"bench.{m}") for m, _, _ in SECTIONS}
    written = {(m, mod.NAME, mod.HEADING) for m, mod in modules.items() if hasattr(mod, "NAME")}
    corpus, quality, server = (modules[m] for m in ("bench_corpus_encode", "bench_quality",
                                                     "bench_server"))  # fmt: skip
    written.add(("bench_corpus_encode", corpus.PAIRED_NAME, corpus.PAIRED_HEADING))
    written |= {("bench_quality", *quality.destination(dtype)) for dtype in ("bf16", "fp32")}
    written.add(("bench_server", tuple(server.NAMES.values()), server.HEADING))
    assert written == set(SECTIONS)


@pytest.mark.parametrize("module", BENCHMARKS)
def test_every_benchmark_has_a_parser_measure_and_render(module):
    loaded = importlib.import_module(f"bench.{module}")
    assert callable(loaded.parser) and callable(loaded.measure) and callable(loaded.main)
    assert module == "bench_mine" or callable(loaded.render)
    assert loaded.parser().prog  # builds without running anything


def test_a_changed_figure_changes_the_section():
    """Teeth: the section is made from the results, not copied from the page."""
    from bench import bench_train

    results = load_result("train")
    changed = copy.deepcopy(results)
    changed["lmembed_speedup"]["reference"]["median"] += 1.0
    assert bench_train.render(changed) != bench_train.render(results)
