"""Embeddings server: requests/s and latency with and without dynamic micro-batching.

Two ``lmembed serve`` processes load the same model, one with micro-batching (5 ms
window) and one with ``--no-batching`` (one ``encode`` call per request). Each round
sends the same requests (one STSb sentence each, as an online client would) from 16
concurrent client threads over loopback HTTP; rounds alternate between the servers
(the order rotates every repeat) after a warm-up round each. Values are medians over
repeats; ratios are taken per repeat and summarised as median (min-max).

    flock /tmp/lmembed-cpu.lock .venv/bin/python bench/bench_server.py

writes ``bench/results/server.json`` and the "Embeddings server" section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import httpx
from common import (
    alternating,
    data_dir,
    environment,
    environment_block,
    fmt_ratio,
    paired_ratio,
    replace_section,
    save_result,
    spread,
    table,
)

HEADING = "Embeddings server"
SYSTEMS = {"micro-batching": [], "one call per request": ["--no-batching"]}


def sentences(count: int) -> list[str]:
    from lmembed.data.sts import load_sts

    task = load_sts("stsb", data_dir())
    return list(dict.fromkeys(task.sentences1))[:count]


@contextmanager
def server(model: str, dtype: str, window_ms: float, extra: list[str]):
    """``lmembed serve`` in a child process on a free port; yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "lmembed", "serve", "--model", model, "--dtype", dtype,
               "--port", str(port), "--batch-window-ms", str(window_ms), *extra]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"server did not start: {process.stderr.read().decode()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_round(url: str, texts: list[str], concurrency: int) -> dict:
    """Every text as its own request from ``concurrency`` threads; throughput and latency."""
    local = threading.local()

    def call(text: str) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        started = time.perf_counter()
        body = {"input": text, "model": "bench", "encoding_format": "base64"}
        local.client.post("/v1/embeddings", json=body).raise_for_status()
        return time.perf_counter() - started

    before = httpx.get(f"{url}/health").json()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(pool.map(call, texts))
    wall = time.perf_counter() - started
    after = httpx.get(f"{url}/health").json()
    calls = after["encode_calls"] - before["encode_calls"]
    return {
        "requests_per_s": len(texts) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * len(latencies)))],
        "texts_per_encode_call": (after["inputs"] - before["inputs"]) / calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--window-ms", type=float, default=5.0)
    args = parser.parse_args()
    texts = sentences(args.requests)
    runs: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(server(args.model, args.dtype, args.window_ms, extra))
            for name, extra in SYSTEMS.items()
        }
        for url in urls.values():
            run_round(url, texts[: 2 * args.concurrency], args.concurrency)  # warm-up
        for repeat in range(args.repeats):
            for name in alternating(list(SYSTEMS), repeat):
                runs[name].append(run_round(urls[name], texts, args.concurrency))
                print(name, {k: round(v, 2) for k, v in runs[name][-1].items()}, flush=True)
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    env = environment()
    summary = {
        name: {key: spread([r[key] for r in rounds]) for key in rounds[0]}
        for name, rounds in runs.items()
    }
    batched, single = runs["micro-batching"], runs["one call per request"]

    def ratio(key: str, invert: bool = False) -> dict:
        a, b = [r[key] for r in batched], [r[key] for r in single]
        return paired_ratio(b, a) if invert else paired_ratio(a, b)

    ratios = {
        "throughput": ratio("requests_per_s"),
        "p50_speedup": ratio("p50_ms", invert=True),
        "p99_speedup": ratio("p99_ms", invert=True),
    }
    save_result("server", {"env": env, "params": vars(args), "runs": runs,
                           "summary": summary, "ratios": ratios})  # fmt: skip
    rows = [
        [name, f"{s['requests_per_s']['median']:.1f}", f"{s['p50_ms']['median']:.0f}",
         f"{s['p99_ms']['median']:.0f}", f"{s['texts_per_encode_call']['median']:.1f}"]
        for name, s in summary.items()
    ]  # fmt: skip
    body = "\n\n".join(
        [
            environment_block(env, target="make bench-all"),
            f"`lmembed serve --model {args.model} --dtype {args.dtype}` with a "
            f"{args.window_ms:g} ms micro-batch window vs `--no-batching` (one `encode` call "
            f"per request; both run the model in one worker thread). Each round: "
            f"{args.requests} requests of one STSb sentence each (base64 output) from "
            f"{args.concurrency} client threads over loopback HTTP, client and servers on the "
            f"same cores. {args.repeats} repeats, servers alternating, order rotated each "
            "repeat, after a warm-up round each; medians over repeats.",
            table(["server", "requests/s", "p50 ms", "p99 ms", "texts per encode call"], rows),
            f"- micro-batching vs one call per request: throughput "
            f"{fmt_ratio(ratios['throughput'])}, p50 latency {fmt_ratio(ratios['p50_speedup'])} "
            f"lower, p99 latency {fmt_ratio(ratios['p99_speedup'])} lower (per-repeat ratios, "
            "median (min-max)).",
        ]
    )
    replace_section(HEADING, body)
    print(body)


if __name__ == "__main__":
    main()
