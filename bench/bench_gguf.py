"""GGUF export checked in llama.cpp: its vectors against lmembed's torch fp32 ones.

Exports the packaged gemma-3-270m (with ``--adapter`` if given, else the base) with
``lmembed export --format gguf`` as f16 and q8_0, and embeds the first N distinct STSb test
sentences, and the quick STS set (stsb, biosses, sts17), with llama.cpp through
llama-cpp-python. The context sets no pooling, BOS or EOS: llama.cpp takes them from the
file, and the result records what it read. The prompt (llama.cpp has none) is applied to
the texts beforehand, as a client would. Reported: the cosine of each sentence's llama.cpp
vector to lmembed's (target ≥ 0.99), how many token sequences are identical, and the STS
Spearman x100 of all three.

llama-cpp-python does not install next to lmembed's tools unasked (PyPI has only its
source, built with cmake), so it lives in its own environment (``bench/gguf_llamacpp_env.sh``
builds ``.venv-llamacpp``) and runs ``bench/gguf_llamacpp_worker.py``. It is a correctness
check, not a timing: any machine gives the same figures, busy or not.

    bench/gguf_llamacpp_env.sh   # once
    .venv/bin/python -m bench.bench_gguf [--adapter DIR]

writes ``bench/results/gguf.json`` and the "GGUF in llama.cpp" section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from itertools import chain
from pathlib import Path

import numpy as np

from bench.common import (
    ROOT,
    cosines,
    data_dir,
    environment,
    environment_block,
    publish,
    sts_sentences,
    table,
    worker_env,
)

NAME, HEADING = "gguf", "GGUF in llama.cpp"
DEFAULT_MODEL = "gemma-3-270m"
PYTHON = ROOT / ".venv-llamacpp" / "bin" / "python"
WORKER = ROOT / "bench" / "gguf_llamacpp_worker.py"
QUANTIZE = ("f16", "q8_0")
TARGET_COSINE = 0.99
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="the base model (default: the adapter's, else gemma-3-270m)"
    )
    parser.add_argument("--adapter", default=None, help="a trained adapter folder")
    parser.add_argument("--sentences", type=int, default=200, help="texts compared by cosine")
    parser.add_argument("--tasks", default="quick", help="STS tasks scored ('none': skip)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    return parser


class Lookup:
    """Vectors already computed, looked up by text (``score_task`` asks per task)."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.rows, self.vectors = {text: i for i, text in enumerate(texts)}, vectors

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        return self.vectors[[self.rows[text] for text in texts]]


def run_llamacpp(gguf: Path, texts: list[str], work: Path, threads: int, token_texts: int):
    """The worker's report, and its vectors, for ``texts`` (prompted) through ``gguf``."""
    if not PYTHON.is_file():
        raise SystemExit(f"{PYTHON} is missing: run bench/gguf_llamacpp_env.sh first")
    params = {
        "gguf": str(gguf), "texts": str(work / "texts.json"), "vectors": str(work / "v.npy"),
        "threads": threads, "token_texts": token_texts, "out": str(work / "llama.json"),
    }  # fmt: skip
    (work / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    (work / "params.json").write_text(json.dumps(params), encoding="utf-8")
    done = subprocess.run(
        [str(PYTHON), str(WORKER), str(work / "params.json")], env=worker_env(),
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp worker failed on {gguf.name}:\n{done.stderr[-4000:]}")
    return json.loads((work / "llama.json").read_text()), np.load(work / "v.npy")


def weights_alone(folder: Path, embedder, texts: list[str]) -> np.ndarray:
    """``texts`` through the file's weights as transformers' GGUF loader dequantises them,
    computed in fp32: what storing the weights costs, apart from llama.cpp's arithmetic
    (which rounds each matmul's activations to the weights' type: f16, or q8_0 blocks)."""
    import torch
    from transformers import AutoModel

    from lmembed import Embedder
    from lmembed.export.gguf import GGUF_FILE

    model = AutoModel.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    return Embedder(model, embedder.tokenizer, embedder.spec).encode(texts)


def summary(cosine: np.ndarray) -> dict:
    return {"min": round(float(cosine.min()), 5), "mean": round(float(cosine.mean()), 5)}


def measure(args: argparse.Namespace) -> dict:
    from lmembed import Embedder
    from lmembed.data.sts import load_sts, resolve_tasks
    from lmembed.evaluation.sts import score_task
    from lmembed.export import export
    from lmembed.export.gguf import GGUF_FILE

    model = args.model or (None if args.adapter else DEFAULT_MODEL)
    embedder = Embedder.from_pretrained(model, adapter=args.adapter, dtype="fp32")
    compared = sts_sentences(args.sentences)
    tasks = (
        [] if args.tasks == "none" else [load_sts(n, data_dir()) for n in resolve_tasks(args.tasks)]
    )
    pairs = chain.from_iterable(chain(task.sentences1, task.sentences2) for task in tasks)
    texts = list(dict.fromkeys([*compared, *pairs]))
    vectors = {"lmembed torch fp32": embedder.encode(texts)}
    reports = {}
    with tempfile.TemporaryDirectory(prefix="lmembed-gguf-") as tmp:
        for quantize in QUANTIZE:
            work = Path(tmp) / quantize
            folder = export(work / "export", "gguf", quantize=quantize, model=model,
                            adapter=args.adapter)  # fmt: skip
            report, vectors[f"llama.cpp {quantize}"] = run_llamacpp(
                folder / GGUF_FILE, embedder.apply_prompt(texts), work, args.threads, len(compared)
            )
            report["file_mib"] = round((folder / GGUF_FILE).stat().st_size / 2**20, 1)
            vectors[f"weights alone {quantize}"] = weights_alone(folder, embedder, compared)
            reports[quantize] = report
    reference = vectors["lmembed torch fp32"][: len(compared)]
    ids = embedder.tokenize(compared)
    for quantize, report in reports.items():
        tokens = report.pop("tokens")
        report["same_tokens"] = sum(a == b for a, b in zip(tokens, ids, strict=True))
        report["example_tokens"] = {"llama.cpp": tokens[0], "lmembed": ids[0]}
        llama = vectors[f"llama.cpp {quantize}"][: len(compared)]
        report["cosine"] = summary(cosines(llama, reference))
        alone = vectors.pop(f"weights alone {quantize}")
        report["weights_alone_cosine"] = summary(cosines(alone, reference))
    sts = {
        name: {t.name: round(score_task(Lookup(texts, v), t).spearman, 2) for t in tasks}
        for name, v in vectors.items()
    }
    return {
        "what": embedder.spec.model
        + (f" with {args.adapter}" if args.adapter else " (base)")
        + f" exported to GGUF and embedded by llama.cpp; {len(compared)} STSb sentences "
        "compared with lmembed's torch fp32 vectors",
        "environment": environment(),
        "model": embedder.spec.model,
        "adapter": args.adapter,
        "prompt": embedder.spec.prompt,
        "sentences": len(compared),
        "eos_id": embedder.eos_id,
        "forms": reports,
        "sts_spearman": sts,
        "target_cosine": TARGET_COSINE,
    }


def render(results: dict) -> str:
    forms, sts = results["forms"], results["sts_spearman"]
    tasks = list(next(iter(sts.values())))
    rows = [
        [f"llama.cpp {q}", f"{f['file_mib']:.0f}", f"{f['same_tokens']}/{results['sentences']}",
         f"{f['cosine']['min']:.4f}", f"{f['cosine']['mean']:.4f}",
         f"{f['weights_alone_cosine']['min']:.4f}", f"{f['weights_alone_cosine']['mean']:.4f}"]
        + [f"{sts[f'llama.cpp {q}'][t]:.2f}" for t in tasks]
        for q, f in forms.items()
    ]  # fmt: skip
    rows.append(["lmembed torch fp32", "–", "–", "1", "1", "1", "1"]
                + [f"{sts['lmembed torch fp32'][t]:.2f}" for t in tasks])  # fmt: skip
    read = next(iter(forms.values()))
    model = results["model"] + (f" + `{results['adapter']}`" if results["adapter"] else " (base)")
    target = results["target_cosine"]
    verdicts = ", ".join(
        f"{q} **{'met' if f['cosine']['min'] >= target else 'missed'}** ({f['cosine']['min']:.4f})"
        for q, f in forms.items()
    )
    return "\n\n".join([
        environment_block(results["environment"], note=f"llama-cpp-python "
                          f"{read['llama_cpp_python']} (`.venv-llamacpp`)",
                          target="python -m bench.bench_gguf"),
        f"{model} exported by `lmembed export --format gguf` and embedded by llama.cpp with no "
        f"pooling, BOS or EOS set by the client: it read pooling "
        f"`{POOLING_NAMES[read['pooling_type']]}`, add BOS `{read['add_bos']}` and add EOS "
        f"`{read['add_eos']}` from the file. Prompt: "
        f"{json.dumps(results['prompt']) if results['prompt'] else 'none'} (applied by the "
        f"client). Cosine of each of the first {results['sentences']} distinct STSb test "
        "sentences to lmembed's torch fp32 vector, in llama.cpp and with the file's weights "
        "alone (transformers' GGUF loader, fp32 arithmetic: what storing the weights costs, "
        "apart from llama.cpp rounding each matmul's activations to the weights' type); "
        "identical token sequences; STS Spearman x100.",
        table(["engine", "file MiB", "same tokens", "min cosine", "mean cosine",
               "weights alone: min", "mean", *[f"{t} Spearman" for t in tasks]], rows),
        f"- Target min cosine in llama.cpp ≥ {target}: {verdicts}.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    results = measure(parser().parse_args(argv))
    publish(NAME, HEADING, results, render)
    for quantize, form in results["forms"].items():
        print(f"{quantize}: cosine min {form['cosine']['min']:.4f}, same tokens "
              f"{form['same_tokens']}/{results['sentences']}")  # fmt: skip


if __name__ == "__main__":
    main()
