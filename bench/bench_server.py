"""Embeddings server: throughput with and without micro-batching, and a mixed-input load test.

``--mode throughput``: two ``lmembed serve`` processes load the same model, one with
micro-batching (5 ms window) and one with ``--no-batching`` (one ``encode`` call per
request). Each round sends the same requests (one STSb sentence each, as an online
client would) from 16 concurrent client threads over loopback HTTP; rounds alternate
between the servers (the order rotates every repeat) after a warm-up round each.
Values are medians over repeats; ratios are taken per repeat and summarised as median (min-max).

``--mode load``: one ``lmembed serve`` (API key required) gets ``--load-requests``
requests from 16 threads, ``--bad-fraction`` of them bad (lone surrogates, empty lists,
oversize texts, wrong types, an unknown ``input_type``) or edge cases (empty strings);
the good ones have 1-3 STSb sentences and a random ``input_type``. It fails (exit 1)
on any 5xx, any unexpected status, or any vector that differs from ``Embedder.encode``
(normalised) in this process (``lmembed.serving.loadtest``).

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_server [--mode load]

writes ``bench/results/server.json`` (throughput), ``bench/results/server_load.json``
(load) and the "Embeddings server" section of ``docs/benchmarks.md`` from both.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import httpx

from bench.common import (
    alternating,
    data_dir,
    environment,
    environment_block,
    fmt_ratio,
    load_result,
    paired_ratio,
    replace_section,
    save_result,
    spread,
    table,
)

HEADING = "Embeddings server"
# The results of each mode, by file name; the section is rendered from both.
NAMES = {"throughput": "server", "load": "server_load"}
SYSTEMS = {"micro-batching": [], "one call per request": ["--no-batching"]}
LOAD_KEY = "bench-load-key"


def sentences(count: int) -> list[str]:
    from lmembed.data.sts import load_sts

    task = load_sts("stsb", data_dir())
    return list(dict.fromkeys(task.sentences1))[:count]


@contextmanager
def server(model: str, dtype: str, window_ms: float, extra: list[str], api_key: str = ""):
    """``lmembed serve`` in a child process on a free port (``api_key``: the only key it
    accepts, via ``$LMEMBED_API_KEY``); yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "lmembed", "serve", "--model", model, "--dtype", dtype,
               "--port", str(port), "--batch-window-ms", str(window_ms), *extra]  # fmt: skip
    env = {**os.environ, "LMEMBED_API_KEY": api_key}
    with tempfile.TemporaryFile() as log:  # a file, not a pipe nobody reads while it runs
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while not _healthy(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    sys.exit(f"server did not start: {log.read().decode()[-3000:]}")
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


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="both", choices=("throughput", "load", "both"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--load-requests", type=int, default=500)
    parser.add_argument("--bad-fraction", type=float, default=0.1)
    return parser


def measure(args: argparse.Namespace) -> dict:
    """The results of the modes that ran, by file name (``server``, ``server_load``); each
    is saved as soon as its mode ends, so a failing load test keeps the throughput's."""
    results = {}
    for mode, run in (("throughput", throughput), ("load", load)):
        if args.mode in (mode, "both"):
            results[NAMES[mode]] = run(args)
            save_result(NAMES[mode], results[NAMES[mode]])
    return results


def passed(result: dict) -> bool:
    """Whether every answer of the load test (its results) was as expected."""
    return not result["problems"] and result["summary"]["server_errors"] == 0


def main(argv: list[str] | None = None) -> None:
    """The modes' results, then the section from both saved files (a mode that did not run
    keeps its earlier results)."""
    measured = measure(parser().parse_args(argv))
    body = render({name: load_result(name) for name in NAMES.values()})
    replace_section(HEADING, body)
    print(body)
    if NAMES["load"] in measured and not passed(measured[NAMES["load"]]):
        sys.exit("load test failed: see the problems above and bench/results/server_load.json")


def throughput(args: argparse.Namespace) -> dict:
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
    params = {k: v for k, v in vars(args).items() if k not in ("load_requests", "bad_fraction")}
    return {"env": environment(), "params": params, "runs": runs, "summary": summary,
            "ratios": ratios}  # fmt: skip


def load(args: argparse.Namespace) -> dict:
    """The mixed-input load test (``passed`` says whether every answer was as expected)."""
    from lmembed import Embedder
    from lmembed.serving import ServerConfig
    from lmembed.serving.loadtest import (
        check_load,
        encode_reference,
        make_requests,
        run_load,
        summarize,
    )

    pool = sentences(args.requests)
    max_chars = ServerConfig().max_chars  # the server runs with the default limits
    requests = make_requests(pool, args.load_requests, args.bad_fraction, max_chars, seed=0)
    load_average = os.getloadavg()[0]  # other work on the cores shows in every figure
    with server(args.model, args.dtype, args.window_ms, [], api_key=LOAD_KEY) as url:
        warm = [r for r in requests if r.kind == "good"][: 2 * args.concurrency]
        run_load(url, warm, args.concurrency, api_key=LOAD_KEY)
        outcomes, wall_s = run_load(url, requests, args.concurrency, api_key=LOAD_KEY)
        health = httpx.get(f"{url}/health").json()
    # The reference model loads after the server has gone: the two never share the cores.
    embedder = Embedder.from_pretrained(args.model, dtype=args.dtype)
    problems = check_load(outcomes, encode_reference(embedder, requests))
    summary = summarize(outcomes, wall_s)
    summary["texts_per_encode_call"] = health["inputs"] / max(health["encode_calls"], 1)
    params = {k: getattr(args, k) for k in ("model", "dtype", "concurrency", "window_ms",
                                            "load_requests", "bad_fraction")}  # fmt: skip
    env = {**environment(), "load_average_1min": load_average}
    print(json.dumps(summary, indent=1))
    for problem in problems[:20]:
        print("PROBLEM", problem)
    return {"env": env, "params": params, "summary": summary, "problems": problems}


def render(results: dict) -> str:
    """The "Embeddings server" section from both modes' results, by file name (either may
    be None: no run has made it yet)."""
    parts = []
    if (result := results.get(NAMES["throughput"])) is not None:
        parts.append(throughput_markdown(result))
    if (result := results.get(NAMES["load"])) is not None:
        parts.append(load_markdown(result))
    return "\n\n".join(parts)


def throughput_markdown(result: dict) -> str:
    p, summary, ratios = result["params"], result["summary"], result["ratios"]
    rows = [
        [name, f"{s['requests_per_s']['median']:.1f}", f"{s['p50_ms']['median']:.0f}",
         f"{s['p99_ms']['median']:.0f}", f"{s['texts_per_encode_call']['median']:.1f}"]
        for name, s in summary.items()
    ]  # fmt: skip
    return "\n\n".join(
        [
            environment_block(result["env"], target="make bench-all"),
            f"`lmembed serve --model {p['model']} --dtype {p['dtype']}` with a "
            f"{p['window_ms']:g} ms micro-batch window vs `--no-batching` (one `encode` call "
            f"per request; both run the model in one worker thread). Each round: "
            f"{p['requests']} requests of one STSb sentence each (base64 output) from "
            f"{p['concurrency']} client threads over loopback HTTP, client and servers on the "
            f"same cores. {p['repeats']} repeats, servers alternating, order rotated each "
            "repeat, after a warm-up round each; medians over repeats.",
            table(["server", "requests/s", "p50 ms", "p99 ms", "texts per encode call"], rows),
            f"- micro-batching vs one call per request: throughput "
            f"{fmt_ratio(ratios['throughput'])}, p50 latency {fmt_ratio(ratios['p50_speedup'])} "
            f"lower, p99 latency {fmt_ratio(ratios['p99_speedup'])} lower (per-repeat ratios, "
            "median (min-max)).",
        ]
    )


def _load_note(env: dict) -> str:
    if "load_average_1min" not in env:
        return "."
    return f"; 1-minute load average before the run: {env['load_average_1min']:.1f}."


def load_markdown(result: dict) -> str:
    p, s = result["params"], result["summary"]
    rows = [[kind, ", ".join(f"{status}: {n}" for status, n in counts.items())]
            for kind, counts in s["by_kind"].items()]  # fmt: skip
    verdict = (
        "**passed**: no 5xx, every status as expected, every good request's vectors equal "
        "`Embedder.encode` (normalised) in the client process"
        if passed(result)
        else f"**failed**: {len(result['problems'])} problems (`bench/results/server_load.json`)"
    )
    return "\n\n".join(
        [
            "### Mixed-input load test",
            environment_block(result["env"], target="make bench-all"),
            f"One `lmembed serve --model {p['model']} --dtype {p['dtype']}` ({p['window_ms']:g} "
            f"ms window, API key required) gets {p['load_requests']} requests from "
            f"{p['concurrency']} threads over loopback; {p['bad_fraction']:.0%} are bad or edge "
            "cases (lone surrogates, empty lists, oversize texts, wrong types, an unknown "
            "`input_type`, empty strings), the rest carry 1-3 STSb sentences with a random "
            "`input_type` (none, query, document). One round after a warm-up. This is a "
            "correctness check under concurrency; its requests/s are not comparable with the "
            "table above (several texts and three prompts per request, another run)"
            + _load_note(result["env"]),
            table(
                ["requests/s", "p50 ms", "p99 ms", "texts per encode call", "statuses"],
                [
                    [
                        f"{s['requests_per_s']:.1f}",
                        f"{s['p50_ms']:.0f}",
                        f"{s['p99_ms']:.0f}",
                        f"{s['texts_per_encode_call']:.1f}",
                        ", ".join(f"{k}: {n}" for k, n in s["statuses"].items()),
                    ]
                ],
            ),
            table(["request kind", "statuses"], rows),
            f"- Result: {verdict}.",
        ]
    )


if __name__ == "__main__":
    main()
