"""Corpus-scale encoding: flat memory, in-memory throughput, and what a kill costs.

A generated corpus (one short text per line) is encoded by ``encode_corpus`` into
shards, and by one in-memory ``Embedder.encode`` call over the whole list (the
baseline), each in a fresh process so peak RSS is the process's own. The model is
the tests' tiny random llama (hidden size 32): a real model only makes the model's
share of the time larger, so the streaming/sharding overhead measured here is an
upper bound. Then a streamed run is SIGKILLed mid-way and resumed; the work lost
is the rows encoded before the kill that the resume encodes again.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_corpus_encode \
        --sizes 10000,1000000 --shard-size 50000

writes ``bench/results/corpus_encode.json`` and the "Corpus encoding" section of
``docs/benchmarks.md``. The throughput ratio of one pair of runs is at the mercy of
whatever else the machine runs; ``--paired N --repeat R`` measures it properly: R
alternating pairs of streamed and in-memory runs on N texts, summarised per pair
(``corpus_encode_paired.json``, section "Corpus encoding: paired throughput").

A results file may carry a ``note`` (added by hand): a remark on the streaming throughput
figure of that run, which the section prints after it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    ROOT,
    alternating,
    environment,
    environment_block,
    fmt_ratio,
    paired_ratio,
    publish,
    run_worker,
    worker_command,
    worker_env,
    worker_main,
)

NAME, HEADING = "corpus_encode", "Corpus encoding"
PAIRED_NAME, PAIRED_HEADING = "corpus_encode_paired", "Corpus encoding: paired throughput"
BATCH = 256


def write_corpus(path: Path, n: int) -> Path:
    """``n`` distinct short texts, streamed to disk (the parent never holds them all)."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(f"doc {i} on topic {i % 97} and {(i * 7) % 1000}\n")
    return path


def _tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import make_tiny_model

    return folder if (folder / "config.json").exists() else make_tiny_model(folder)


def _embedder(model: str):
    import torch

    from lmembed.model import Embedder

    torch.set_num_threads(1)
    return Embedder.from_pretrained(model=model, dtype="fp32")


def stream_worker(model: str, corpus: str, output: str, shard_size: int, workdir: str) -> dict:
    from lmembed.encoding import EncodeCorpusOptions, encode_corpus, read_manifest

    embedder = _embedder(model)
    started = time.perf_counter()
    options = EncodeCorpusOptions(input=corpus, output=output, shard_size=shard_size,
                                  batch_size=BATCH)  # fmt: skip
    encode_corpus(embedder, options)
    return {"seconds": time.perf_counter() - started, "rows": read_manifest(output)["rows"]}


def memory_worker(model: str, corpus: str, output: str, workdir: str, **_: object) -> dict:
    import numpy as np

    embedder = _embedder(model)
    started = time.perf_counter()
    with open(corpus, encoding="utf-8") as handle:
        texts = [line.rstrip("\n") for line in handle if line.strip()]
    vectors = embedder.encode(texts, batch_size=BATCH, show_progress=False)
    np.save(output, vectors)
    return {"seconds": time.perf_counter() - started, "rows": len(texts)}


WORKERS = {"stream": stream_worker, "memory": memory_worker}


def kill_and_resume(model: str, corpus: Path, out: Path, shard_size: int, rows: int,
                    kill_after_s: float) -> dict:  # fmt: skip
    """SIGKILL a streamed run after ``kill_after_s``, resume it, count re-encoded rows."""
    from lmembed.encoding import finished_entry

    params = {"model": model, "corpus": str(corpus), "output": str(out),
              "shard_size": shard_size, "workdir": str(out)}  # fmt: skip
    command = worker_command(__spec__.name, "stream", params, out / "killed.json")
    process = subprocess.Popen(
        command, env=worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(kill_after_s)
    process.send_signal(signal.SIGKILL)
    process.wait()
    shards = -(-rows // shard_size)
    kept = [i for i in range(shards) if finished_entry(out, i) is not None]
    resumed = run_worker(__spec__.name, "stream", params)
    redone = shards - len(kept)
    return {"killed_after_s": kill_after_s, "shards": shards, "shards_kept": len(kept),
            "shards_reencoded": redone, "resume_seconds": round(resumed["seconds"], 2),
            "rows_lost_at_most": min(shard_size, rows - len(kept) * shard_size)}  # fmt: skip


def paired(model: str, work: Path, n: int, shard_size: int, repeat: int) -> dict:
    """Alternating streamed / in-memory runs on ``n`` texts; per-pair throughput ratios."""
    corpus = write_corpus(work / f"corpus-{n}.txt", n)
    seconds: dict[str, list[float]] = {"stream": [], "memory": []}
    for r in range(repeat):
        for name in alternating(["stream", "memory"], r):
            output = work / f"paired-{name}" if name == "stream" else work / "paired.npy"
            subprocess.run(["rm", "-rf", str(output)], check=True)
            result = run_worker(
                __spec__.name,
                name,
                {
                    "model": model,
                    "corpus": str(corpus),
                    "output": str(output),
                    "shard_size": shard_size,
                },
            )
            seconds[name].append(result["seconds"])
            print(name, round(result["seconds"], 2), flush=True)
    ratio = paired_ratio(seconds["memory"], seconds["stream"])  # throughput stream / memory
    return {"environment": environment(), "texts": n, "shard_size": shard_size,
            "batch_size": BATCH, "seconds": seconds, "throughput_ratio": ratio}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000", help="corpus sizes (texts)")
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--kill-after-s", type=float, default=60.0)
    parser.add_argument("--paired", type=int, default=0, help="only the paired throughput, N texts")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/lmembed-bench-corpus")
    return parser


def measure(args: argparse.Namespace) -> dict:
    """The sizes and the kill, or with ``--paired`` only the paired throughput."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = str(_tiny_model(work / "tiny-llama"))
    if args.paired:
        return paired(model, work, args.paired, args.shard_size, args.repeat)
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = []
    for n in sizes:
        corpus = write_corpus(work / f"corpus-{n}.txt", n)
        for name in ("stream", "memory"):
            output = work / f"{name}-{n}" if name == "stream" else work / f"memory-{n}.npy"
            subprocess.run(["rm", "-rf", str(output)], check=True)
            result = run_worker(__spec__.name, name, {"model": model, "corpus": str(corpus),
                                                      "output": str(output),
                                                      "shard_size": args.shard_size})  # fmt: skip
            runs.append({"system": name, "texts": n, "seconds": round(result["seconds"], 2),
                         "texts_per_s": round(n / result["seconds"], 1),
                         "peak_rss_mib": result["peak_rss_mib"]})  # fmt: skip
            print(runs[-1], flush=True)
    largest = sizes[-1]
    kill_dir = work / f"killed-{largest}"
    subprocess.run(["rm", "-rf", str(kill_dir)], check=True)
    kill = kill_and_resume(model, work / f"corpus-{largest}.txt", kill_dir, args.shard_size,
                           largest, args.kill_after_s)  # fmt: skip
    print(kill, flush=True)
    return {"environment": environment(), "shard_size": args.shard_size, "batch_size": BATCH,
            "runs": runs, "kill_and_resume": kill}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    results = measure(args)
    if args.paired:
        publish(PAIRED_NAME, PAIRED_HEADING, results, render)
    else:
        publish(NAME, HEADING, results, render)


def render(results: dict) -> str:
    """The "Corpus encoding" section, or from ``--paired`` results its paired throughput."""
    if "throughput_ratio" in results:
        return render_paired(results)
    runs = {(r["system"], r["texts"]): r for r in results["runs"]}
    sizes = sorted({r["texts"] for r in results["runs"]})
    small, large = sizes[0], sizes[-1]
    rows = ["| texts | system | seconds | texts/s | peak RSS (MiB) |", "|---:|---|---:|---:|---:|"]
    for n in sizes:
        for system in ("stream", "memory"):
            r = runs[(system, n)]
            rows.append(f"| {n:,} | {system} | {r['seconds']} | {r['texts_per_s']} | "
                        f"{r['peak_rss_mib']} |")  # fmt: skip
    s_small, s_large = runs[("stream", small)], runs[("stream", large)]
    m_large = runs[("memory", large)]
    growth = s_large["peak_rss_mib"] - s_small["peak_rss_mib"]
    ratio = s_large["texts_per_s"] / m_large["texts_per_s"]
    kill = results["kill_and_resume"]
    return "\n".join([
        f"`encode_corpus` (shards of {results['shard_size']:,}, batch {results['batch_size']}) "
        "against one in-memory `Embedder.encode` call, on a generated corpus of short "
        "texts with the tests' tiny random llama (so the model's share of the time is "
        "small and the pipeline's overhead shows at its largest).",
        "",
        *rows,
        "",
        f"- Peak RSS of streaming grows by **{growth} MiB** from {small:,} to {large:,} "
        f"texts (in memory: {runs[('memory', small)]['peak_rss_mib']} → "
        f"{m_large['peak_rss_mib']} MiB). Streaming holds one shard (texts, tokens, "
        f"vectors), so its memory follows `--shard-size`, not the input: the {small:,}-text "
        "run never fills a shard.",
        "- Every worker runs with 1 torch thread (the line below gives the parent's).",
        f"- Streaming throughput at {large:,} texts: **{ratio:.3f}x** the in-memory call "
        "(target: within 5%)" + (f": {results['note']}" if results.get("note") else "."),
        f"- Killed after {kill['killed_after_s']:g} s: {kill['shards_kept']} of "
        f"{kill['shards']} shards were finished and kept; the resume encoded the other "
        f"{kill['shards_reencoded']} in {kill['resume_seconds']} s, so at most "
        f"{kill['rows_lost_at_most']:,} rows (the shard in progress) were encoded twice.",
        environment_block(results["environment"], target="python -m bench.bench_corpus_encode"),
    ])  # fmt: skip


def render_paired(results: dict) -> str:
    ratio, shard_size = results["throughput_ratio"], results["shard_size"]
    return "\n".join([
        f"{len(ratio['values'])} alternating pairs of a streamed (`encode_corpus`, shards of "
        f"{shard_size:,}) and an in-memory run on {results['texts']:,} generated texts, tiny "
        f"random llama, batch {results['batch_size']}, each run in a fresh process: streamed "
        f"throughput is **{fmt_ratio(ratio)}** the in-memory call's (median, min-max over "
        "pairs; target within 5%: "
        f"**{'met' if abs(ratio['median'] - 1) <= 0.05 else 'not met'}** on the median).",
        "",
        environment_block(results["environment"], target="python -m bench.bench_corpus_encode"),
    ])  # fmt: skip


if __name__ == "__main__":
    if not worker_main(WORKERS):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        main()
