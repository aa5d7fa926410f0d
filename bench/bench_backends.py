"""CPU inference: lmembed on torch, ONNX Runtime and OpenVINO against sentence-transformers.

For each model: lmembed's torch ``Embedder`` (fp32), its ONNX export (fp32 and two int8 forms,
``lmembed export --format onnx [--quantize int8|int8-block]``) run on ONNX Runtime and OpenVINO,
and ``SentenceTransformer.encode`` on torch (in this process) and on its ``onnx`` (fp32 and
its own dynamic int8 helper) and ``openvino`` backends. Those two need optimum-onnx
(transformers < 4.58) and optimum-intel (transformers < 5.6), which do not install next to
lmembed's transformers 5, so they run in their own environments
(``bench/st_backends_env.sh`` builds ``.venv-st-onnx`` and ``.venv-st-openvino``) through
``bench/st_backend_worker.py``: sentence-transformers exports the model itself, once, and
each timed repeat loads that export, encodes one warm-up batch and is timed over the texts.
A backend whose environment is missing or fails is recorded with its error.

Same texts (the first N distinct STSb test sentences), batch 32 and max length (the
model's lmembed default) for all; each repeat runs the engines in rotated order after one
warm-up call each. Speed-ups are per repeat against the fastest sentence-transformers
backend, summarised as median (min-max). Quality: Spearman x100 on the quick STS set
(stsb, biosses, sts17) for lmembed's fp32 and int8 graphs.

    bench/st_backends_env.sh   # once
    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_backends

writes ``bench/results/backends.json`` and the "CPU inference backends" section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    ROOT,
    alternating,
    cosines,
    data_dir,
    environment,
    environment_block,
    fmt_ratio,
    load_result,
    publish,
    save_result,
    spread,
    sts_sentences,
    table,
)
from lmembed.system import native_bf16

NAME, HEADING = "backends", "CPU inference backends"
BATCH = 32
USABLE_COSINE = 0.9  # an engine whose vectors fall below this is no option (lmembed refuses it)
OV_TYPES = {"fp32": "f32", "bf16": "bf16"}


def lmembed_engines(model: str, work: Path) -> tuple[dict, dict, dict]:
    """lmembed's engines, the export times (s) of the fp32 and int8 graphs, and the errors
    of exports that were refused (an int8 graph that breaks the vectors)."""
    from lmembed import Embedder
    from lmembed.backends import load_encoder
    from lmembed.export import ExportError, export

    engines = {"lmembed torch fp32": Embedder.from_pretrained(model, dtype="fp32")}
    if native_bf16():
        engines["lmembed torch bf16"] = Embedder.from_pretrained(model, dtype="bf16")
    seconds, errors = {}, {}
    for quantize in (None, "int8", "int8-block"):
        label = quantize or "fp32"
        start = time.perf_counter()
        try:
            folder = export(work / label, kind="onnx", quantize=quantize, model=model)
        except ExportError as error:
            errors[f"lmembed onnx/openvino {label}"] = str(error)
            continue
        seconds[label] = round(time.perf_counter() - start, 1)
        for backend in ("onnx", "openvino"):
            engines[f"lmembed {backend} {label}"] = load_encoder({"model": str(folder)}, backend)
        if quantize is None and native_bf16():
            engines["lmembed openvino bf16"] = load_encoder(
                {"model": str(folder)}, "openvino", runtime_precision="bf16"
            )
    return engines, seconds, errors


ST_ENVS = {"onnx": ROOT / ".venv-st-onnx", "openvino": ROOT / ".venv-st-openvino"}
WORKER = Path(__file__).with_name("st_backend_worker.py")


def st_engines(model: str, work: Path, max_length: int, texts: list[str]) -> tuple[dict, dict]:
    """sentence-transformers on torch here and on onnx/openvino in their environments, and
    the errors of those that could not run."""
    from sentence_transformers import SentenceTransformer

    from lmembed.export import export
    from lmembed.model.loading import PACKAGED_MODELS

    if model == "all-minilm-l6-v2":
        folder = PACKAGED_MODELS[model].locate()
    else:  # lmembed's own sentence-transformers export: EOS in the tokenizer, last token
        folder = export(work / "st", kind="sentence-transformers", model=model, dtype="fp32")
    engines, errors = {}, {}
    for dtype in ("fp32", "bf16") if native_bf16() else ("fp32",):
        kwargs = {"dtype": torch.bfloat16} if dtype == "bf16" else {}
        st = SentenceTransformer(str(folder), device="cpu", backend="torch", model_kwargs=kwargs)
        st.max_seq_length = max_length
        engines[f"sentence-transformers torch {dtype}"] = _StEncoder(st)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    for backend, label, ov_config in st_backends():
        name = f"sentence-transformers {backend} {label}"
        params = {"folder": str(folder), "saved": str(work / name.replace(" ", "-")),
                  "backend": backend, "int8": label == "int8", "texts": str(texts_file),
                  "batch_size": BATCH, "max_length": max_length,
                  "ov_config": ov_config}  # fmt: skip
        try:
            precision = OV_TYPES[label] if backend == "openvino" else None
            engines[name] = _ExternalSt(ST_ENVS[backend], params, work / f"{name}.json", precision)
        except RuntimeError as error:
            errors[name] = str(error)
    return engines, errors


def st_backends() -> list[tuple[str, str, dict]]:
    """(backend, label, OpenVINO config) of the external sentence-transformers engines.
    OpenVINO computes in bf16 by default where the CPU has bf16 units, so there it runs
    twice: pinned to f32, and as it comes (the worker reports the precision it chose)."""
    engines = [("onnx", "fp32", {}), ("onnx", "int8", {}),
               ("openvino", "fp32", {"INFERENCE_PRECISION_HINT": "f32"})]  # fmt: skip
    if native_bf16():
        engines.append(("openvino", "bf16", {}))
    return engines


class _StEncoder:
    def __init__(self, model) -> None:
        self.model = model

    def encode(self, texts, batch_size=BATCH, show_progress=False, role=None) -> np.ndarray:
        return np.asarray(
            self.model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress)
        )


class _ExternalSt:
    """A sentence-transformers backend in another environment (``st_backend_worker.py``):
    exported once here; ``timed`` is the worker's own measurement of one encode."""

    def __init__(self, env: Path, params: dict, out: Path, precision: str | None) -> None:
        self.python = env / "bin" / "python"
        self.precision = precision  # OpenVINO's name of the precision the label promises
        if not self.python.is_file():
            raise RuntimeError(f"{env} not found: run bench/st_backends_env.sh")
        self.params = {**params, "out": str(out)}
        self.prepared = self._run("prepare")  # export seconds and package versions

    def _run(self, mode: str) -> dict:
        params_file = Path(self.params["out"]).with_suffix(".params.json")
        params_file.write_text(json.dumps(self.params), encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run([str(self.python), str(WORKER), mode, str(params_file)],
                              env=env, capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["(no output)"]
            raise RuntimeError(f"{mode} failed: {lines[-1]}")
        return json.loads(Path(self.params["out"]).read_text(encoding="utf-8"))

    def timed(self, texts: list[str]) -> float:
        """The worker's seconds; an OpenVINO engine must compute in its label's precision."""
        done = self._run("encode")
        if done.get("precision", self.precision) != self.precision:
            raise RuntimeError(f"{self.params['out']}: OpenVINO computed in {done['precision']}")
        return done["seconds"]

    def encode(self, texts, batch_size=BATCH, show_progress=False, role=None) -> np.ndarray:
        """The vectors of the last timed run (one more run only if none has happened)."""
        vectors = Path(self.params["out"]).with_suffix(".npy")
        if not vectors.is_file():
            self._run("encode")
        return np.load(vectors)


def seconds_of(engine, texts: list[str]) -> float:
    """One timed encode: measured here, or by the worker for another environment."""
    if isinstance(engine, _ExternalSt):
        return engine.timed(texts)
    start = time.perf_counter()
    engine.encode(texts, batch_size=BATCH, show_progress=False)
    return time.perf_counter() - start


def time_engines(engines: dict, texts: list[str], repeats: int) -> dict[str, list[float]]:
    """Seconds per engine per repeat (rotated order; one warm-up call each first)."""
    for engine in engines.values():
        if not isinstance(engine, _ExternalSt):  # the worker warms up itself
            engine.encode(texts[:BATCH], batch_size=BATCH, show_progress=False)
    names = list(engines)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in alternating(names, repeat):
            seconds[name].append(seconds_of(engines[name], texts))
            print(f"  {name}: {seconds[name][-1]:.2f} s", flush=True)
    return seconds


def quick_sts(engines: dict, names: list[str]) -> dict[str, float]:
    from lmembed.evaluation.sts import evaluate

    scores = {}
    for name in names:
        result = evaluate(engines[name], "quick", data_dir(), BATCH, progress=False, cache=False)
        scores[name] = round(result.average_over(["stsb", "biosses", "sts17"]), 2)
    return scores


def bench_model(model: str, count: int, repeats: int, quality: bool) -> dict:
    from lmembed.model.loading import PACKAGED_MODELS

    max_length = PACKAGED_MODELS[model].max_length
    texts = sts_sentences(count)
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        engines, export_s, refused = lmembed_engines(model, Path(tmp))
        theirs, errors = st_engines(model, Path(tmp), max_length, texts)
        errors.update(refused)
        engines.update(theirs)
        seconds = time_engines(engines, texts, repeats)
        reference = engines["lmembed torch fp32"].encode(texts, batch_size=BATCH)
        agreement = {
            name: round(float(cosines(e.encode(texts, batch_size=BATCH), reference).min()), 6)
            for name, e in engines.items()
        }
        graphs = [f"lmembed onnx {label}" for label in ("fp32", "int8", "int8-block")]
        graphs.append("lmembed openvino bf16")
        graphs = [name for name in graphs if name in engines]
        scores = quick_sts(engines, graphs) if quality else {}
    return {
        "model": model, "texts": len(texts), "batch_size": BATCH, "max_length": max_length,
        "repeats": repeats, "export_seconds": export_s, "unavailable": errors,
        "st_environments": {n: e.prepared for n, e in theirs.items() if isinstance(e, _ExternalSt)},
        "seconds": {name: spread(values) for name, values in seconds.items()},
        "texts_per_s": {n: round(len(texts) / statistics.median(v), 1) for n, v in seconds.items()},
        "min_cosine_vs_torch": agreement, "quick_sts": scores,
    }  # fmt: skip


def against_fastest_st(result: dict) -> dict:
    """``result`` with ``fastest_st``, the fastest sentence-transformers engine whose vectors
    hold (min cosine >= ``USABLE_COSINE``: the bar lmembed's own int8 exports must pass),
    and every engine's per-repeat speed-up over it (``vs_fastest_st``)."""
    seconds = {name: spread["values"] for name, spread in result["seconds"].items()}
    fastest = fastest_usable(result, "sentence-transformers")
    ratios = {
        name: spread([b / a for a, b in zip(values, seconds[fastest], strict=True)])
        for name, values in seconds.items()
    }
    return {**result, "fastest_st": fastest, "vs_fastest_st": ratios}


def render(results: dict) -> str:
    """The section from the results: ``environment`` and one result per model."""
    parts = [
        environment_block(results["environment"], target="python -m bench.bench_backends"),
        "",
        "Texts: the first N distinct STSb test sentences; batch 32; max length = the model's "
        "lmembed default (MiniLM 256, gemma 128); all fp32 unless marked int8 (ONNX Runtime "
        "dynamic quantisation: int8 weights per channel, activations quantised per batch), "
        "int8-block (MatMulNBits: weights and activations with a scale per block of 32) or "
        "bf16 (only on CPUs with bf16 units: torch with bf16 weights; OpenVINO computing the "
        "fp32 graph in bf16, `--backend openvino --runtime-precision bf16` for lmembed and "
        "OpenVINO's own default on such CPUs for sentence-transformers, its reported "
        "precision checked). "
        "sentence-transformers' onnx and openvino backends run in their own environments "
        "(their versions below), timed by the worker around one encode after a warm-up "
        "batch; every repeat runs the engines in rotated order after a warm-up call. "
        "Speed-up: the time of the fastest sentence-transformers backend whose vectors hold "
        f"(lowest cosine against lmembed torch fp32 ≥ {USABLE_COSINE}, the bar lmembed's own "
        "int8 exports must pass) over the engine's, per repeat, median (min-max). Cosine: "
        "lowest over the texts against lmembed torch fp32.",
    ]
    for result in results["results"]:
        rows = [
            [
                name,
                f"{result['seconds'][name]['median']:.2f}",
                f"{result['texts_per_s'][name]:.0f}",
                fmt_ratio(result["vs_fastest_st"][name]),
                f"{result['min_cosine_vs_torch'][name]:.6f}",
            ]
            for name in result["seconds"]
        ]
        header = ["engine", "s (median)", "texts/s", "vs fastest ST", "min cosine"]
        parts += [
            "",
            f"**{result['model']}**, {result['texts']} texts, {result['repeats']} repeats; "
            "lmembed's export took "
            + " and ".join(f"{s} s ({k})" for k, s in result["export_seconds"].items())
            + ".",
            "",
            table(header, rows),
            "",
            verdict(result),
        ]
        if result["quick_sts"]:
            scores = ", ".join(f"{k}: {v:.2f}" for k, v in result["quick_sts"].items())
            parts += ["", f"Quick STS (Spearman x100, average of 3): {scores}."]
        for name, prepared in result["st_environments"].items():
            versions = ", ".join(f"{k} {v}" for k, v in prepared["versions"].items())
            parts += ["", f"{name}: exported by sentence-transformers in "
                      f"{prepared['export_s']} s; {versions}."]  # fmt: skip
        for name, error in result["unavailable"].items():
            last = error.strip().splitlines()[-1]
            parts += ["", f"{name}: not measured, it failed: `{last}`"]
    return "\n".join(parts) + "\n"


def holds(result: dict, name: str) -> bool:
    return result["min_cosine_vs_torch"][name] >= USABLE_COSINE


def fastest_usable(result: dict, system: str) -> str:
    """The engine of ``system`` (its name's prefix) with the lowest median time among those
    whose vectors hold."""
    usable = [name for name in result["seconds"] if name.startswith(system) and holds(result, name)]
    return min(usable, key=lambda name: result["seconds"][name]["median"])


def verdict(result: dict) -> str:
    """The bar, lmembed's fastest engine that clears the cosine bar, and who falls below it."""
    seconds = result["seconds"]
    best = fastest_usable(result, "lmembed")
    below = [
        f"{name} ({result['min_cosine_vs_torch'][name]:.4f}, {seconds[name]['median']:.2f} s)"
        for name in seconds
        if not holds(result, name)
    ]
    text = (
        f"The bar: {result['fastest_st']}. lmembed's fastest engine whose vectors hold: "
        f"**{best}, {fmt_ratio(result['vs_fastest_st'][best])}**."
    )
    if below:
        text += f" Below the cosine bar, so no option by this rule: {', '.join(below)}."
    return text


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all-minilm-l6-v2,gemma-3-270m")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-quality", action="store_true", help="skip the quick STS scores")
    parser.add_argument(
        "--from-results", action="store_true", help="only rewrite the docs section from the JSON"
    )
    return parser


def measure(args: argparse.Namespace) -> dict:
    """Every model's engines; the results so far are saved after each model."""
    env = environment()
    results = []
    for model in args.models.split(","):
        print(f"{model}:", flush=True)
        result = bench_model(model, args.texts, args.repeats, not args.no_quality)
        results.append(against_fastest_st(result))
        save_result(NAME, {"environment": env, "results": results})
    return {"environment": env, "results": results}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.from_results:  # the speed-ups again, by the current rule
        saved = load_result(NAME)
        saved["results"] = [against_fastest_st(result) for result in saved["results"]]
    else:
        saved = measure(args)
    publish(NAME, HEADING, saved, render)


if __name__ == "__main__":
    main()
