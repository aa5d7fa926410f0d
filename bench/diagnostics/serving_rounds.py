"""Where a serving round's latency goes: per-request send times of the slowest 1%, and
lmembed variants (extra ``lmembed serve`` flags) against infinity-emb, MiniLM on ONNX.

    python -m bench.diagnostics.serving_rounds --cells 1x32 --repeats 3
    python -m bench.diagnostics.serving_rounds --variant "--batch-window-ms 5" \
        --variant "--batch-window-ms 0" --cells 1x8,1x32,32x8 --repeats 2 --seconds 3

Each server (a fresh process per variant and repeat, as ``bench.bench_serving`` starts
them) gets a warm-up, then one closed-loop round per cell of ``--seconds``; a round prints
texts/s, p50/p99 and when in the round its slowest 1% of requests were sent. Nothing is
published: this is how the serving benchmark's 1-text tails were diagnosed.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import replace

from bench import bench_serving as serving
from lmembed.serving.loadtest import summarize


def report(label: str, outcomes: list, wall_s: float, texts: int) -> None:
    summary = summarize(outcomes, wall_s)
    start = min(o.sent_at for o in outcomes)
    slowest = sorted(
        round(o.sent_at - start, 2) for o in outcomes if 1000 * o.seconds >= summary["p99_ms"]
    )[:12]
    print(f"{label}: {texts * summary['requests_per_s']:.0f} texts/s, p50 "
          f"{summary['p50_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms; slowest 1% sent at "
          f"{slowest} s", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="lmembed serve flags")
    parser.add_argument("--cells", default="1x8,1x32", help="TEXTSxCLIENTS, comma list")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--no-infinity", action="store_true", help="lmembed variants only")
    args = parser.parse_args()
    model = serving.prepare("all-minilm-l6-v2", None, "none")
    pool = serving.sts_sentences(1024)
    base = serving.launch(model, "lmembed", "onnx")
    servers = [
        replace(base, backend=f"onnx {flags}".strip(), command=[*base.command, *shlex.split(flags)])
        for flags in args.variant or [""]
    ]
    if not args.no_infinity:
        servers.append(serving.launch(model, "infinity", "optimum"))
    cells = [tuple(int(n) for n in cell.split("x")) for cell in args.cells.split(",")]
    for repeat in range(args.repeats):
        for server in servers:
            with serving.running(server) as up:
                warm = serving.requests_of(pool, 1, serving.WARM_UP, model.served)
                serving.load_round(up.url, warm, serving.WARM_UP, None)
                for texts, clients in cells:
                    requests = serving.requests_of(pool, texts, 4096 // texts, model.served)
                    outcomes, wall_s = serving.checked_round(
                        up.url, requests, clients, args.seconds
                    )
                    report(f"{server.label} {texts}x{clients} #{repeat}", outcomes, wall_s, texts)


if __name__ == "__main__":
    main()
