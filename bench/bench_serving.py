"""Serving: ``lmembed serve`` against infinity-emb on the same CPU, one server at a time.

Two models: the packaged all-MiniLM-L6-v2 (an encoder, mean pooling) and gemma-3-270m with
an adapter (`make demo`'s ``runs/demo/adapter`` when it exists, else 4 steps of the demo
recipe trained once into the cache: the vectors' speed does not depend on how long the
adapter trained), pooled by its last token with EOS appended. What each server loads:

* ``lmembed serve --backend torch``: the model (and adapter, merged) in fp32;
  ``--backend onnx|openvino``: ``lmembed export --format onnx`` of it;
* infinity ``--engine torch`` (sentence-transformers 3.4): ``lmembed export --format
  sentence-transformers`` (fp32, LoRA merged, EOS appended by the tokenizer, last-token or
  mean pooling), whose sentence-transformers 6 configs this bench rewrites for 3.4
  (infinity-emb 0.0.78 needs sentence-transformers < 4);
* infinity ``--engine optimum`` (ONNX Runtime, with its own graph optimisation): the same
  ONNX graph with the sentence-transformers tokenizer, started from inside its folder
  (``--model-id .``, as it loads a local folder only that way). Its pooling is mean or CLS
  only: it cannot pool gemma by the last token, so for gemma it runs mean pooling and its
  cosine to lmembed's vectors says how far that is.

First each server's backends are screened, one fresh server each: two short rounds (8
clients, requests of 1 and of 32 texts) and the cosine of its vectors to lmembed torch's;
per server and model the fastest (geometric mean of the two rounds' texts/s) whose vectors
agree (cosine ≥ 0.999) is picked. The torch engines also run as ``torch-passive``, with
``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that spin while they wait take a core from the
clients and the server's own HTTP loop on a 2-core machine.

Then, per model and repeat, each picked server starts alone (never two at once; the order
rotates every repeat), warms up, embeds the agreement texts and takes closed-loop rounds
over loopback from 1, 8 and 32 client threads, with requests of 1 and of 32 STSb sentences
(base64 vectors, as the OpenAI SDK asks by default). The threads start and connect before
a round's clock; then each sends its next request when its last is answered
(``lmembed.serving.loadtest.run_load``). A round sends the same requests to
both servers and stops sending after ``--seconds`` or ``--max-texts``, whichever comes
first. Reported: texts/s, p50/p99 latency, the server's RSS (peak over its life, after
start and after the rounds), the cosine between the two servers' vectors, and per cell
lmembed's throughput over infinity's (paired by repeat; target ≥ 1.0x at an equal or lower
p99 with 8 and 32 clients).

    bench/infinity_env.sh   # once: .venv-infinity
    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_serving

writes ``bench/results/serving.json`` and the "Serving: lmembed against infinity-emb"
section of ``docs/benchmarks.md``. ``--quick`` (a smoke run: one repeat, short rounds)
writes its results to a temporary file and prints the section, publishing nothing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import cycle, islice
from pathlib import Path

import numpy as np

from bench.common import (
    ROOT,
    alternating,
    cosines,
    environment,
    environment_block,
    fmt_ratio,
    nli_path,
    paired_ratio,
    publish,
    spread,
    sts_sentences,
    table,
    worker_env,
)

NAME, HEADING = "serving", "Serving: lmembed against infinity-emb"
INFINITY = ROOT / ".venv-infinity" / "bin" / "infinity_emb"
MODELS = ("all-minilm-l6-v2", "gemma-3-270m")
DEMO_ADAPTER = ROOT / "runs" / "demo" / "adapter"
TRAIN_STEPS = 4
SERVERS = ("lmembed", "infinity")
# torch-passive: torch with OpenMP threads that sleep instead of spinning while they wait
# (OMP_WAIT_POLICY=PASSIVE): clients and server share the cores, and a spinning thread
# takes a core from them.
BACKENDS = {
    "lmembed": ("torch", "torch-passive", "onnx", "openvino"),
    "infinity": ("torch", "torch-passive", "optimum"),
}
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
SCREEN_CELLS = ((1, 8), (32, 8))  # (texts per request, clients)
CELLS = tuple((texts, clients) for texts in (1, 32) for clients in (1, 8, 32))
TARGET, TARGET_CLIENTS, AGREEMENT = 1.0, (8, 32), 0.999
OPTIMUM_PROVIDER = "CPUExecutionProvider"  # what infinity picks on a CPU without OpenVINO
WARM_UP = 4  # requests of each size, at once, before a server's rounds
STARTUP_S = 600  # the longest a server may take to load its model
# lmembed's 504 after 60 s would cut a slow 32 x 32 round short (infinity has no such limit).
REQUEST_TIMEOUT_S = 600
INFINITY_PACKAGES = (
    "infinity_emb",
    "torch",
    "transformers",
    "sentence-transformers",
    "optimum",
    "onnxruntime",
)
# sentence-transformers 6's module paths, and 3.4's for the same modules.
ST3_MODULES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Normalize": "sentence_transformers.models.Normalize",
}
ST3_CONFIGS = ("modules.json", "sentence_bert_config.json", "1_Pooling")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS)
    )
    parser.add_argument(
        "--adapter",
        default=None,
        help=f"gemma's adapter (default: {DEMO_ADAPTER.relative_to(ROOT)} if "
        f"present, else {TRAIN_STEPS} demo-recipe steps trained into the cache)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="send time of one round")
    parser.add_argument(
        "--screen-seconds", type=float, default=2.0, help="send time of one screening round"
    )
    parser.add_argument("--max-texts", type=int, default=4096, help="most texts one round sends")
    parser.add_argument("--pool", type=int, default=1024, help="distinct STSb sentences sent")
    parser.add_argument(
        "--agreement-texts",
        type=int,
        default=64,
        help="texts whose vectors the servers must agree on",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 repeat, 1 s rounds, nothing published"
    )
    return parser


# --- the models, as each server gets them ---------------------------------------------------


@dataclass(frozen=True)
class Model:
    """One model: lmembed's flags for it, and the folders made for each engine."""

    name: str
    adapter: str | None
    adapter_note: str
    onnx: Path  # lmembed export --format onnx: lmembed onnx/openvino
    sentence_transformers: Path  # the export rewritten for sentence-transformers 3.4
    infinity_onnx: Path  # the ONNX graph with that tokenizer: infinity optimum
    hub_cache: Path  # infinity optimum finds its optimised graph under it
    optimisation: dict  # infinity_worker.py's report: was the graph optimised?

    @property
    def served(self) -> str:
        return self.name


def lmembed_cli(*args: str) -> None:
    """Run ``lmembed ARGS`` in a fresh process (its model never shares the bench's memory)."""
    done = subprocess.run(
        [sys.executable, "-m", "lmembed", *args],
        env=worker_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        sys.exit(f"lmembed {shlex.join(args)} failed:\n{done.stderr[-4000:]}")


def gemma_adapter(requested: str | None) -> tuple[str, str]:
    """The adapter gemma is served with, and what it is: the requested one, else the
    demo's, else ``TRAIN_STEPS`` steps of the demo recipe (trained once, cached)."""
    from lmembed.io import cache_root

    if requested:
        return requested, f"`{requested}`"
    if (DEMO_ADAPTER / "adapter_config.json").is_file():
        return str(DEMO_ADAPTER), "`make demo`'s adapter (`runs/demo/adapter`)"
    folder = cache_root() / "bench-serving" / f"gemma-adapter-{TRAIN_STEPS}-steps"
    if not (folder / "adapter_config.json").is_file():
        print(f"training a {TRAIN_STEPS}-step adapter into {folder}", flush=True)
        lmembed_cli(
            "train",
            "--config",
            "configs/gemma-3-270m-cpu.yaml",
            "--steps",
            str(TRAIN_STEPS),
            "--data",
            str(nli_path()),
            "--output",
            str(folder),
            "--eval-every",
            "0",
            "--no-eval-at-start",
        )
    note = (
        f"no `make demo` adapter here: {TRAIN_STEPS} steps of the demo recipe "
        "(configs/gemma-3-270m-cpu.yaml), as fast to embed with as a fully trained one"
    )
    return str(folder), note


def prepare(name: str, adapter: str | None, note: str) -> Model:
    """Export ``name`` (+ ``adapter``) for every engine, once: the folders are cached under a
    key of the model and the adapter's files."""
    from lmembed.io import cache_root, folder_fingerprint

    key = json.dumps([name, adapter, folder_fingerprint(adapter)])
    root = (
        cache_root() / "bench-serving" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    )
    flags = ["--model", name, *(["--adapter", adapter] if adapter else []), "--dtype", "fp32"]
    for form, folder in (("onnx", root / "onnx"), ("sentence-transformers", root / "st")):
        if not folder.is_dir():
            print(f"exporting {name} as {form} to {folder}", flush=True)
            lmembed_cli("export", *flags, "--format", form, "--output", str(folder))
    st3 = root / "st3"
    if not st3.is_dir():
        sentence_transformers_3(root / "st", st3)
    graph = root / "infinity-onnx"
    if not graph.is_dir():
        onnx_with_tokenizer(root / "onnx", st3, graph)
    optimisation = optimise_for_infinity(graph, root / "hub")
    return Model(name, adapter, note, root / "onnx", st3, graph, root / "hub", optimisation)


def optimise_for_infinity(graph: Path, hub: Path) -> dict:
    """infinity's ONNX graph optimisation, run once by ``bench/infinity_worker.py`` into
    the folder infinity looks in (``--model-id .``); its report."""
    from lmembed.io import atomic_write_json

    report = hub / "optimisation.json"
    if not report.is_file():
        save_dir = hub / "infinity_onnx" / OPTIMUM_PROVIDER
        worker = [str(INFINITY.with_name("python")), str(ROOT / "bench" / "infinity_worker.py")]
        command = [*worker, str(graph), str(save_dir)]
        done = subprocess.run(command, env=worker_env(), capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"infinity_worker.py failed on {graph}:\n{done.stderr[-4000:]}")
        atomic_write_json(report, json.loads(done.stdout.splitlines()[-1]))
    return json.loads(report.read_text(encoding="utf-8"))


def sentence_transformers_3(source: Path, target: Path) -> None:
    """``source`` (a sentence-transformers 6 folder) as sentence-transformers 3.4 reads it:
    the same files (linked), with 3.4's module paths and config keys. Whether the result
    embeds as lmembed does is what the bench's cosine checks."""
    from lmembed.io import atomic_directory, atomic_write_json

    modules = json.loads((source / "modules.json").read_text(encoding="utf-8"))
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    tokenizer = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    for module in modules:
        module["type"] = ST3_MODULES[module["type"].rsplit(".", 1)[-1]]
    with atomic_directory(target) as tmp:
        for path in source.iterdir():
            if path.name not in ST3_CONFIGS:
                (tmp / path.name).symlink_to(path.resolve())
        atomic_write_json(tmp / "modules.json", modules)
        config = {"max_seq_length": tokenizer["model_max_length"], "do_lower_case": False}
        atomic_write_json(tmp / "sentence_bert_config.json", config)
        pooled = {
            "word_embedding_dimension": pooling["embedding_dimension"],
            "pooling_mode": pooling["pooling_mode"],
            "include_prompt": pooling.get("include_prompt", True),
        }
        atomic_write_json(tmp / "1_Pooling" / "config.json", pooled)


def onnx_with_tokenizer(onnx: Path, tokenizer: Path, target: Path) -> None:
    """The ONNX export's graph and config (linked) with ``tokenizer``'s tokenizer files
    (EOS appended), for infinity's optimum engine, which tokenizes with the folder's."""
    from lmembed.io import atomic_directory

    graph = [
        p for p in onnx.iterdir() if p.name.startswith("model.onnx") or p.name == "config.json"
    ]
    tokens = [p for p in tokenizer.iterdir() if p.name.startswith(("tokenizer", "special_tokens"))]
    with atomic_directory(target) as tmp:
        for path in graph + tokens:
            (tmp / path.name).symlink_to(path.resolve())


# --- servers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """How to start one server with one backend (``--port`` is added when it starts);
    ``env``: what it sets on top of ``worker_env()``."""

    server: str
    backend: str
    command: list[str]
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.server} {self.backend}"


def launch(model: Model, server: str, backend: str) -> Launch:
    engine = backend.removesuffix("-passive")
    env = PASSIVE if backend.endswith("-passive") else {}
    if server == "lmembed":
        source = ["--model", str(model.onnx)]
        if engine == "torch":
            adapter = ["--adapter", model.adapter] if model.adapter else []
            source = ["--model", model.name, *adapter, "--dtype", "fp32"]
        serve = [sys.executable, "-m", "lmembed", "serve", *source, "--backend", engine]
        limits = ["--request-timeout-s", str(REQUEST_TIMEOUT_S), "--no-access-log"]
        command = [*serve, "--name", model.served, *limits]
        return Launch(server, backend, command, env=env)
    env = {**env, "HF_HUB_CACHE": str(model.hub_cache), "DO_NOT_TRACK": "1"}
    common = ["--engine", engine, "--device", "cpu", "--dtype", "float32", "--url-prefix", "/v1",
              "--served-model-name", model.served, "--log-level", "warning"]  # fmt: skip
    if engine == "torch":
        command = [str(INFINITY), "v2", "--model-id", str(model.sentence_transformers), *common]
        return Launch(server, backend, command, env=env)
    command = [str(INFINITY), "v2", "--model-id", ".", *common, "--pooling-method", "mean"]
    return Launch(server, backend, command, cwd=model.infinity_onnx, env=env)


@dataclass(frozen=True)
class Running:
    url: str
    pid: int
    startup_s: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(server: Launch) -> Iterator[Running]:
    """``server`` in a child process on a free port, once ``/health`` answers 200."""
    import httpx

    port = free_port()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe nobody reads while it runs
        started = time.perf_counter()
        process = subprocess.Popen(
            [*server.command, "--port", str(port)],
            cwd=server.cwd,
            env={**worker_env(), **server.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            while not _healthy(httpx, url):
                if process.poll() is not None or time.perf_counter() - started > STARTUP_S:
                    log.seek(0)
                    sys.exit(f"{server.label} did not start:\n{log.read().decode()[-4000:]}")
                time.sleep(0.5)
            yield Running(url, process.pid, time.perf_counter() - started)
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _healthy(httpx, url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def memory_mib(pid: int) -> dict[str, float]:
    """The process's resident memory now and its peak (``VmHWM``), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        key: round(int(fields[name].split()[0]) / 1024)
        for key, name in (("rss", "VmRSS"), ("peak", "VmHWM"))
    }


# --- clients ---------------------------------------------------------------------------------


def requests_of(pool: list[str], texts: int, count: int, model: str) -> list:
    """``count`` requests of ``texts`` consecutive pool sentences each (the pool cycles)."""
    from lmembed.serving.loadtest import LoadRequest

    sentences = cycle(pool)
    body = {"model": model, "encoding_format": "base64"}
    return [
        LoadRequest("good", {**body, "input": list(islice(sentences, texts))}, 200)
        for _ in range(count)
    ]


def checked_round(url: str, requests: list, clients: int, seconds: float | None) -> tuple:
    """One closed-loop round's outcomes and wall time; every answer must be a 200."""
    from lmembed.serving.loadtest import run_load

    outcomes, wall_s = run_load(url, requests, clients, seconds=seconds)
    failed = [o for o in outcomes if o.status != 200]
    if failed:
        sys.exit(
            f"{len(failed)} requests failed at {url}: {failed[0].status} "
            f"{json.dumps(failed[0].payload)[:300]} {failed[0].error or ''}"
        )
    return outcomes, wall_s


def load_round(url: str, requests: list, clients: int, seconds: float | None) -> dict:
    """One closed-loop round, summarised."""
    from lmembed.serving.loadtest import summarize

    outcomes, wall_s = checked_round(url, requests, clients, seconds)
    summary = summarize(outcomes, wall_s)
    texts = len(requests[0].texts)
    return {
        "requests": summary["requests"],
        "wall_s": round(wall_s, 2),
        "texts_per_s": round(texts * summary["requests_per_s"], 1),
        "p50_ms": round(summary["p50_ms"], 1),
        "p99_ms": round(summary["p99_ms"], 1),
    }


def embed(url: str, texts: list[str], model: str) -> np.ndarray:
    """The server's vectors (float32) for ``texts``, 32 a request."""
    import httpx

    rows = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for start in range(0, len(texts), 32):
            body = {"model": model, "input": texts[start : start + 32], "encoding_format": "base64"}
            response = client.post("/v1/embeddings", json=body)
            response.raise_for_status()
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            rows += [np.frombuffer(base64.b64decode(d["embedding"]), np.float32) for d in data]
    return np.stack(rows)


def cell_name(texts: int, clients: int) -> str:
    return f"{texts}x{clients}"


def session(server: Launch, model: Model, cells, args, pool: list[str]) -> tuple[dict, np.ndarray]:
    """Start ``server``, warm it up, embed the agreement texts, run one round per cell;
    its figures and its vectors."""
    agreement = pool[: args.agreement_texts]
    with running(server) as up:
        after_start = memory_mib(up.pid)["rss"]
        for texts in sorted({texts for texts, _ in cells}):  # first-call allocations
            load_round(up.url, requests_of(pool, texts, WARM_UP, model.served), WARM_UP, None)
        vectors = embed(up.url, agreement, model.served)
        rounds = {}
        for texts, clients in cells:
            count = max(clients, args.max_texts // texts)
            requests = requests_of(pool, texts, count, model.served)
            rounds[cell_name(texts, clients)] = load_round(up.url, requests, clients, args.seconds)
            print(
                f"{model.name} {server.label} {cell_name(texts, clients)}: "
                f"{rounds[cell_name(texts, clients)]}",
                flush=True,
            )
        memory = memory_mib(up.pid)
    result = {
        "startup_s": round(up.startup_s, 1),
        "rounds": rounds,
        "rss_mib": {
            "after_start": after_start,
            "after_load": memory["rss"],
            "peak": memory["peak"],
        },
    }
    return result, vectors


# --- the benchmark ---------------------------------------------------------------------------


def agreement_of(vectors: np.ndarray, reference: np.ndarray) -> dict:
    cosine = cosines(vectors, reference)
    return {"min": round(float(cosine.min()), 5), "mean": round(float(cosine.mean()), 5)}


def screen(model: Model, args, pool: list[str]) -> tuple[dict, dict[str, str]]:
    """Every backend of both servers, briefly: figures, cosine to lmembed torch, and the
    backend picked per server."""
    screened, reference = {}, None
    short = argparse.Namespace(**{**vars(args), "seconds": args.screen_seconds})
    for server in SERVERS:
        for backend in BACKENDS[server]:
            result, vectors = session(
                launch(model, server, backend), model, SCREEN_CELLS, short, pool
            )
            reference = vectors if reference is None else reference  # lmembed torch's
            result["cosine_to_lmembed_torch"] = agreement_of(vectors, reference)
            result["score"] = round(
                statistics.geometric_mean([r["texts_per_s"] for r in result["rounds"].values()]), 1
            )
            screened[f"{server} {backend}"] = result
    return screened, {server: pick(screened, server) for server in SERVERS}


def pick(screened: dict, server: str) -> str:
    """The fastest backend of ``server`` whose vectors agree with lmembed torch's; the
    fastest of all when none does (then the section says so)."""
    own = {label.split()[1]: r for label, r in screened.items() if label.split()[0] == server}
    agreeing = {b: r for b, r in own.items() if r["cosine_to_lmembed_torch"]["min"] >= AGREEMENT}
    return max(agreeing or own, key=lambda b: own[b]["score"])


def compare(model: Model, picked: dict[str, str], args, pool: list[str]) -> dict:
    """The picked servers, alternating over repeats: per-cell figures and ratios."""
    runs: dict[str, list[dict]] = {server: [] for server in SERVERS}
    vectors = {}
    for repeat in range(args.repeats):
        for server in alternating(SERVERS, repeat):
            result, vectors[server] = session(
                launch(model, server, picked[server]), model, CELLS, args, pool
            )
            runs[server].append(result)
    cells = {}
    for texts, clients in CELLS:
        name = cell_name(texts, clients)
        rounds = {s: [run["rounds"][name] for run in runs[s]] for s in SERVERS}
        figures = {
            s: {
                key: spread([r[key] for r in rounds[s]], 1)
                for key in ("texts_per_s", "p50_ms", "p99_ms")
            }
            for s in SERVERS
        }
        cells[name] = {
            **figures,
            "throughput_ratio": paired_ratio(
                *[[r["texts_per_s"] for r in rounds[s]] for s in SERVERS]
            ),
            # infinity's p99 over lmembed's: above 1, lmembed's is lower.
            "p99_ratio": paired_ratio(
                *[[r["p99_ms"] for r in rounds[s]] for s in reversed(SERVERS)]
            ),
        }
        if clients in TARGET_CLIENTS:
            cells[name]["target_met"] = met_target(cells[name])
    memory = {
        s: {
            k: spread([run["rss_mib"][k] for run in runs[s]], 0)
            for k in ("after_start", "after_load", "peak")
        }
        for s in SERVERS
    }
    startup = {s: spread([run["startup_s"] for run in runs[s]], 1) for s in SERVERS}
    return {
        "runs": runs,
        "cells": cells,
        "memory_mib": memory,
        "startup_s": startup,
        "agreement": agreement_of(vectors["lmembed"], vectors["infinity"]),
    }


def met_target(cell: dict) -> bool:
    """lmembed's throughput at least ``TARGET`` times infinity's at an equal or lower p99
    (medians over repeats)."""
    lower_p99 = cell["lmembed"]["p99_ms"]["median"] <= cell["infinity"]["p99_ms"]["median"]
    return cell["throughput_ratio"]["median"] >= TARGET and lower_p99


def infinity_versions() -> dict[str, str]:
    python = INFINITY.with_name("python")
    code = (
        "import importlib.metadata as m, json; "
        f"print(json.dumps({{p: m.version(p) for p in {list(INFINITY_PACKAGES)}}}))"
    )
    return json.loads(
        subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    )


def shown(server: Launch) -> str:
    """A server's command line as the results record it: its folder and environment
    first, paths under the cache or the repository shortened, the port left out."""
    from lmembed.io import cache_root

    command = server.command
    words = command[2:] if command[0] == sys.executable else ["infinity_emb", *command[1:]]
    text = shlex.join([*(f"{k}={v}" for k, v in server.env.items()), *words])
    if server.cwd != ROOT:
        text = f"cd {shlex.quote(str(server.cwd))} && {text}"
    return text.replace(str(cache_root()), "$LMEMBED_CACHE").replace(str(ROOT) + "/", "")


def measure(args: argparse.Namespace) -> dict:
    if not INFINITY.is_file():
        sys.exit(f"{INFINITY} is missing: run bench/infinity_env.sh first")
    names = args.models.split(",")
    unknown = set(names) - set(MODELS)
    if unknown:
        sys.exit(f"--models: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    pool = sts_sentences(args.pool)
    models = {}
    for name in names:
        adapter, note = gemma_adapter(args.adapter) if name == "gemma-3-270m" else (None, "none")
        models[name] = prepare(name, adapter, note)
    results = {}
    for name, model in models.items():
        started = time.perf_counter()
        screened, picked = screen(model, args, pool)
        compared = compare(model, picked, args, pool)
        results[name] = {
            "adapter": model.adapter,
            "adapter_note": model.adapter_note,
            "commands": {
                f"{s} {b}": shown(launch(model, s, b)) for s in SERVERS for b in BACKENDS[s]
            },
            "infinity_onnx_optimised": model.optimisation,
            "screening": screened,
            "picked": picked,
            "picked_agree": all(
                screened[f"{s} {b}"]["cosine_to_lmembed_torch"]["min"] >= AGREEMENT
                for s, b in picked.items()
            ),
            **compared,
            "minutes": round((time.perf_counter() - started) / 60, 1),
        }
    params = {k: v for k, v in vars(args).items() if k != "models"}
    return {
        "environment": environment(),
        "infinity_versions": infinity_versions(),
        "params": {**params, "models": names},
        "models": results,
        "target": TARGET,
        "target_clients": list(TARGET_CLIENTS),
        "agreement": AGREEMENT,
    }


# --- the section -----------------------------------------------------------------------------


def render(results: dict) -> str:
    p, v = results["params"], results["infinity_versions"]
    note = (
        f"infinity-emb {v['infinity_emb']} (`.venv-infinity`: torch {v['torch']}, "
        f"transformers {v['transformers']}, sentence-transformers "
        f"{v['sentence-transformers']}, optimum {v['optimum']}, onnxruntime "
        f"{v['onnxruntime']})"
    )
    parts = [
        environment_block(
            results["environment"], note=note, target="python -m bench.bench_serving"
        ),
        "Each server alone on the same cores as its clients (loopback HTTP, base64 vectors; "
        "client threads started and connected before a round's clock, each sending its next "
        "request when its last is answered). "
        "infinity's torch engine loads `lmembed export --format sentence-transformers` (its "
        "configs rewritten for sentence-transformers 3.4), its optimum engine the `lmembed "
        "export --format onnx` graph, optimised ahead of time as infinity would "
        "(`bench/infinity_worker.py`: with optimum 2 its own call fails), with mean pooling "
        "(it has no last-token pooling). `torch-passive`: torch with `OMP_WAIT_POLICY=PASSIVE` "
        "(OpenMP threads sleep instead of spinning while they wait). "
        f"Backends screened first (two rounds of 8 clients each, {p['screen_seconds']:g} s); "
        f"the fastest whose vectors agree with lmembed torch's (cosine ≥ {results['agreement']}) "
        f"is picked per server. Then {p['repeats']} repeats, servers alternating (order "
        f"rotated each repeat, a fresh process each time), each round sending for "
        f"{p['seconds']:g} s (at most {p['max_texts']} texts) after a warm-up; medians over "
        "repeats, ratios paired by repeat, median (min-max). A cell is *texts per request x "
        f"client threads*; target: lmembed ≥ {results['target']:g}x infinity's texts/s at an "
        f"equal or lower p99 with {' and '.join(map(str, results['target_clients']))} clients.",
    ]
    for name, model in results["models"].items():
        parts.append(model_markdown(name, model, results))
    return "\n\n".join(parts)


def model_markdown(name: str, model: dict, results: dict) -> str:
    picked = model["picked"]
    screen_rows = [
        [
            label,
            *[f"{r['rounds'][cell_name(*c)]['texts_per_s']:.0f}" for c in SCREEN_CELLS],
            f"{r['cosine_to_lmembed_torch']['min']:.5f}",
            f"{r['startup_s']:.0f}",
            "**picked**" if picked[label.split()[0]] == label.split()[1] else "",
        ]
        for label, r in model["screening"].items()
    ]
    cell_rows = []
    for cell, c in model["cells"].items():
        lm, inf = c["lmembed"], c["infinity"]
        verdict = {True: "met", False: "**missed**"}.get(c.get("target_met"), "–")
        cell_rows.append(
            [
                cell,
                f"{lm['texts_per_s']['median']:.0f}",
                f"{lm['p50_ms']['median']:.0f}",
                f"{lm['p99_ms']['median']:.0f}",
                f"{inf['texts_per_s']['median']:.0f}",
                f"{inf['p50_ms']['median']:.0f}",
                f"{inf['p99_ms']['median']:.0f}",
                fmt_ratio(c["throughput_ratio"]),
                fmt_ratio(c["p99_ratio"]),
                verdict,
            ]
        )
    memory_rows = [
        [
            f"{s} {picked[s]}",
            f"{m['peak']['median']:.0f}",
            f"{m['after_start']['median']:.0f}",
            f"{m['after_load']['median']:.0f}",
            f"{model['startup_s'][s]['median']:.0f}",
        ]
        for s, m in model["memory_mib"].items()
    ]
    targeted = [c for c in model["cells"].values() if "target_met" in c]
    agreement = model["agreement"]
    lines = [
        f"### {name}",
        f"Adapter: {model['adapter_note']}." if model["adapter"] else "No adapter.",
        "Backends screened (texts/s of requests of 1 and 32 texts from 8 clients; cosine: lowest "
        "over the agreement texts, to lmembed torch's vectors):",
        table(
            ["server backend", "1x8 texts/s", "32x8 texts/s", "min cosine", "startup s", ""],
            screen_rows,
        ),
        table(
            [
                "cell",
                "lmembed texts/s",
                "p50 ms",
                "p99 ms",
                "infinity texts/s",
                "p50 ms",
                "p99 ms",
                "throughput lmembed/infinity",
                "p99 infinity/lmembed",
                "target",
            ],
            cell_rows,
        ),
        table(
            ["server", "peak RSS MiB", "RSS after start", "RSS after load", "startup s"],
            memory_rows,
        ),
        f"- Vectors of lmembed {picked['lmembed']} against infinity {picked['infinity']}: "
        f"cosine min {agreement['min']:.5f}, mean {agreement['mean']:.5f} over "
        f"{results['params']['agreement_texts']} STSb sentences.",
        f"- infinity's ONNX graph: {optimised(model['infinity_onnx_optimised'])}.",
        f"- Target met in {sum(c['target_met'] for c in targeted)} of {len(targeted)} cells "
        f"with {' and '.join(map(str, results['target_clients']))} clients.",
    ]
    if not model["picked_agree"]:
        lines.append(
            "- No infinity backend computes lmembed's embedding of this model "
            "(see the cosines above): the figures are for what it can compute."
        )
    return "\n\n".join(lines)


def optimised(report: dict) -> str:
    if report["optimized"]:
        return "optimised (ORTOptimizer, level 99, as infinity does)"
    return f"served unoptimised, as infinity would ({report['error'].split(':')[0]})"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.quick:
        args.repeats, args.seconds, args.screen_seconds = 1, 1.0, 1.0
        args.max_texts, args.agreement_texts = 512, 32
    results = measure(args)
    if args.quick:
        path = Path(tempfile.mkstemp(prefix="serving-quick-", suffix=".json")[1])
        path.write_text(json.dumps(results, indent=1))
        print(render(results))
        print(f"\nquick run: nothing published; results in {path}")
        return
    print(publish(NAME, HEADING, results, render))


if __name__ == "__main__":
    main()
