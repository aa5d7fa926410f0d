"""Peak memory by phase of ``lmembed`` commands on gemma-3-270m, beside each phase's floor.

Every scenario is a real ``lmembed`` command in a fresh process (``torchrun`` for the
2-process one) under ``bench.memory_probe``, which records each phase's exact peak RSS
(model conversion, load, LoRA, first step, steady training, evaluation, save, export,
encoding, serving). Training runs twice, holding every activation (``before``) and with
``--activation-checkpointing`` (``after``); the 2-process runs sum their ranks' peaks.
``lmembed demo`` runs whole from an empty cache, as ``make demo`` does on a new machine. A
phase that runs a child process (the GGUF conversion and the bf16 copy are written by one)
counts the child's peak on top of the parent's.

The floor of a phase is computed from the model's shapes, on top of the runtime (the RSS
of a process that has imported torch, transformers and lmembed: measured, not computed):

- weights: every parameter but the token-embedding matrix, whose rows are read per token
  (the safetensors cache is memory-mapped, so untouched rows cost nothing);
- LoRA: the adapter's weights, gradients and two Adam moments;
- activations: the input of every decoder layer for the step's tokens, which any exact
  backward pass must keep or recompute from scratch.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_memory

writes ``bench/results/memory.json`` and the "Memory" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    ROOT,
    environment,
    environment_block,
    nli_path,
    publish,
    sts_sentences,
    table,
    worker_env,
)

NAME, HEADING = "memory", "Memory"
TARGETS_MB = {"train fp32, after": 2500, "train bf16, after": 2000, "serve": 1500, "demo": 3000}
TORCHRUN_TARGET = 1.8
PROBE = [sys.executable, "-m", "bench.memory_probe"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "bench.memory_probe"]  # fmt: skip


def run_probe(name: str, argv: list[str], workdir: Path, launcher: list[str] = PROBE,
              env: dict | None = None) -> list[dict]:  # fmt: skip
    """``lmembed ARGV`` under the probe; its phase records (every rank's, ``rank`` set).
    A log that a finished run left in ``workdir`` is read instead (``--logs``: resume)."""
    log = workdir / f"{name}.jsonl"
    if finished(read_phases(log)):
        print(f"{name}: read from {log}", flush=True)
        return read_phases(log)
    for stale in log.parent.glob(f"{log.name}*"):
        stale.unlink()
    started = time.perf_counter()
    with (workdir / f"{name}.err").open("w+") as stderr:
        done = subprocess.run([*launcher, str(log), "--", *argv], env=env or worker_env(),
                              stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)  # fmt: skip
        if done.returncode != 0:
            stderr.seek(0)
            sys.exit(f"{name} failed:\n{stderr.read()[-4000:]}")
    records = read_phases(log)
    print(f"{name}: {time.perf_counter() - started:.0f} s, peak {peak(records):.0f} MB", flush=True)
    return records


def read_phases(log: Path) -> list[dict]:
    records = []
    for path in sorted(log.parent.glob(f"{log.name}*")):
        rank = int(path.name.rpartition(".rank")[2]) if ".rank" in path.name else 0
        records += [{**json.loads(line), "rank": rank} for line in path.read_text().splitlines()]
    return records


def finished(records: list[dict]) -> bool:
    """Every rank of the run reached its ``end`` phase."""
    ranks = {r["rank"] for r in records}
    return bool(ranks) and ranks == {r["rank"] for r in records if r["phase"] == "end"}


def peak(records: list[dict], phase: str | None = None) -> float:
    """The largest peak of ``phase`` (all phases: None), summed over ranks. A phase that ran
    a child process (the GGUF conversion) counts the child's peak on top of its own."""
    by_rank: dict[int, float] = {}
    children: dict[int, float] = {}
    for r in records:
        rank, child = r["rank"], r.get("children_peak_mb", 0.0)
        rose = child > children.get(rank, 0.0)
        children[rank] = max(child, children.get(rank, 0.0))
        if phase is None or r["phase"] == phase:
            total = r["peak_mb"] + (child if rose else 0.0)
            by_rank[rank] = max(by_rank.get(rank, 0.0), total)
    return sum(by_rank.values())


def phase_peaks(records: list[dict]) -> dict[str, float]:
    phases = dict.fromkeys(r["phase"] for r in records if r["phase"] not in ("start", "other"))
    return {phase: round(peak(records, phase)) for phase in phases}


def model_shapes(model: str) -> dict:
    """Parameter counts and sizes of ``model`` and of an all-linear r=8 LoRA on it."""
    import torch

    from lmembed.model.loading import load_backbone
    from lmembed.model.lora import LoraOptions, attach_lora

    backbone, _ = load_backbone(model, "fp32")
    embedding = backbone.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in backbone.parameters())
    lora = attach_lora(backbone, LoraOptions(targets=["all-linear"]))
    adapter = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    config = backbone.config
    del lora, backbone
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"parameters": total, "embedding": embedding, "lora": adapter,
            "layers": config.num_hidden_layers, "hidden": config.hidden_size}  # fmt: skip


def floor_mb(shapes: dict, runtime_mb: float, dtype_bytes: int, tokens: int = 0,
             training: bool = False) -> float:  # fmt: skip
    weights = (shapes["parameters"] - shapes["embedding"]) * dtype_bytes
    lora = shapes["lora"] * 16 if training else 0  # fp32 weight, gradient, 2 Adam moments
    inputs = tokens * shapes["layers"] * shapes["hidden"] * dtype_bytes
    return runtime_mb + (weights + lora + inputs) / 2**20


def step_tokens(records: list[dict]) -> int:
    return max((r.get("tokens", 0) for r in records), default=0)


def train_argv(args, output: Path, dtype: str, steps: int, checkpointing: int) -> list[str]:
    return ["train", "--model", args.model, "--data", str(nli_path()), "--output", str(output),
            "--steps", str(steps), "--batch-size", str(args.batch), "--lr", "5e-4",
            "--warmup", "1", "--lora-targets", "all-linear", "--dtype", dtype,
            "--save-every", "0", "--seed", "0", "--eval-tasks", "biosses",
            "--eval-every", str(steps), "--activation-checkpointing", str(checkpointing),
            "--eval-data-dir", str(nli_path().parents[1])]  # fmt: skip


def serve_phases(args, workdir: Path, adapter: Path) -> list[dict]:
    """``lmembed serve`` under the probe: load, 40 requests of 32 STS sentences, SIGTERM;
    the ``end`` phase's peak is serving's, its RSS the steady state after the requests."""
    import httpx

    log = workdir / "serve.jsonl"
    port = 8765
    argv = ["serve", "--model", args.model, "--adapter", str(adapter), "--port", str(port)]
    server = subprocess.Popen([*PROBE, str(log), "--", *argv], env=worker_env(), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        sentences = sts_sentences(32 * 40)
        with httpx.Client(timeout=120) as client:
            for i in range(40):
                batch = sentences[32 * i : 32 * (i + 1)]
                client.post(f"{url}/v1/embeddings", json={"input": batch, "model": "x"})
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    return read_phases(log)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--batch", type=int, default=32, help="triplets per step")
    parser.add_argument("--steps", type=int, default=3, help="steps of each fp32 training run")
    parser.add_argument("--checkpointing", type=int, default=1,
                        help="--activation-checkpointing of the 'after' runs")  # fmt: skip
    parser.add_argument("--bf16-steps", type=int, default=1,
                        help="steps of the bf16 runs (0: skip them)")  # fmt: skip
    parser.add_argument("--demo-steps", type=int, default=64,
                        help="training steps of the `lmembed demo` run, from an empty cache as "
                        "`make demo` on a new machine (64: the demo's; 0: skip it)")  # fmt: skip
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the runs and probe logs here (default: a temporary folder); "
                        "runs whose logs are complete are read, not rerun")  # fmt: skip
    return parser


def measure(args: argparse.Namespace) -> dict:
    from lmembed.model.spec import resolve_dtype

    env = environment()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        texts = workdir / "texts.txt"
        texts.write_text("\n".join(sts_sentences(512)) + "\n")
        encode = ["encode", "--model", args.model, "--input", str(texts), "--dtype", "fp32"]
        cold = {**worker_env(), "LMEMBED_CACHE": str(workdir / "cache")}
        runs["encode, first load"] = run_probe(
            "encode-cold", [*encode, "--output", str(workdir / "e1")], workdir, env=cold
        )
        runs["encode"] = run_probe("encode", [*encode, "--output", str(workdir / "e2")], workdir)
        if args.demo_steps:
            runs[f"demo {resolve_dtype('auto')}, first run"] = run_probe(
                "demo", ["demo", "--output", str(workdir / "demo"), "--steps",
                         str(args.demo_steps), "--data-dir", str(nli_path().parents[1])],
                workdir, env={**cold, "LMEMBED_CACHE": str(workdir / "demo-cache")})  # fmt: skip
        for dtype, steps in (("fp32", args.steps), ("bf16", args.bf16_steps)):
            for label, every in (("before", 0), ("after", args.checkpointing)):
                if steps:
                    out = workdir / f"train-{dtype}-{label}"
                    argv = train_argv(args, out, dtype, steps, every)
                    runs[f"train {dtype}, {label}"] = run_probe(out.name, argv, workdir)
                    out2 = workdir / f"torchrun-{dtype}-{label}"
                    if dtype == "fp32":
                        runs[f"train fp32 x2 processes, {label}"] = run_probe(
                            out2.name, train_argv(args, out2, dtype, 2, every), workdir, TORCHRUN
                        )
        adapter = workdir / "train-fp32-after"
        runs["export merged"] = run_probe(
            "export", ["export", "--model", args.model, "--adapter", str(adapter), "--format",
                       "merged", "--dtype", "fp32", "--output", str(workdir / "merged")],
            workdir)  # fmt: skip
        runs["serve"] = serve_phases(args, workdir, adapter)
    shapes = model_shapes(args.model)
    runtime = min(r["peak_mb"] for r in runs["encode"] if r["phase"] == "import")
    settings = {k: v for k, v in vars(args).items() if k != "logs"}
    return {"environment": env, "args": settings, "shapes": shapes, "runtime_mb": runtime,
            "runs": runs}  # fmt: skip


def render(results: dict) -> str:
    shapes, runtime = results["shapes"], results["runtime_mb"]
    rows = []
    for name, records in results["runs"].items():
        ranks = 1 + max(r["rank"] for r in records)
        dtype_bytes = 2 if "bf16" in name else 4
        tokens = step_tokens(records) // ranks
        training = name.startswith(("train", "demo"))
        floor = ranks * floor_mb(shapes, runtime, dtype_bytes, tokens, training)
        phases = ", ".join(f"{p} {v:.0f}" for p, v in phase_peaks(records).items())
        steady = sum(max(r["rss_mb"] for r in records if r["rank"] == k and r["phase"] == "end")
                     for k in range(ranks))  # fmt: skip
        target = next((f"{mb}" for key, mb in TARGETS_MB.items() if name.startswith(key)), "")
        rows.append([name, f"{peak(records):.0f}", target, f"{floor:.0f}",
                     f"{peak(records) / floor:.2f}", f"{steady:.0f}", phases])  # fmt: skip
    runs = results["runs"]
    ratio = {label: peak(runs[f"train fp32 x2 processes, {label}"])
             / peak(runs[f"train fp32, {label}"]) for label in ("before", "after")}  # fmt: skip
    body = [
        environment_block(results["environment"], target="python -m bench.bench_memory"),
        f"gemma-3-270m: {shapes['parameters'] / 1e6:.0f}M parameters "
        f"({shapes['embedding'] / 1e6:.0f}M in the token embeddings), "
        f"LoRA all-linear r=8: {shapes['lora'] / 1e6:.2f}M. "
        f"Runtime floor (torch, transformers, lmembed imported): {runtime:.0f} MB. Training: "
        f"batch {results['args']['batch']} triplets, all-linear LoRA; 'after' is "
        f"`--activation-checkpointing {results['args']['checkpointing']}`.",
        "",
        table(
            [
                "run",
                "peak MB",
                "target MB",
                "floor MB",
                "peak/floor",
                "RSS at end MB",
                "peak by phase (MB)",
            ],  # fmt: skip
            rows,
        ),  # fmt: skip
        f"2 processes against 1 (fp32, summed peaks): {ratio['before']:.2f}x before, "
        f"{ratio['after']:.2f}x after (target {TORCHRUN_TARGET}x).",
    ]
    return "\n".join(body) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    print(publish(NAME, HEADING, measure(args), render))


if __name__ == "__main__":
    main()
