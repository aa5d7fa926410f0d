"""GradCache memory and time, and 2 gloo processes against 1, on gemma-3-270m (CPU).

Every configuration is a real ``lmembed train`` run in its own process tree
(``torchrun`` for the 2-process one), so peak RSS (``ru_maxrss`` from
``os.wait4``) covers the whole run: model load, the training steps, the final
save. Step time is the median over steps 2..N of ``log.jsonl`` (step 1 warms up).

    flock /tmp/lmembed-cpu.lock .venv/bin/python bench/bench_gradcache.py

writes ``bench/results/gradcache.json``; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from lmembed.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gradcache.json"
DATA = ROOT.parent / "shared" / "data" / "nli" / "snli_devtest_triplets_tok.csv.gz"


def train_command(args: argparse.Namespace, output: Path, batch: int, steps: int) -> list[str]:
    return [
        "-m", "lmembed", "train", "--model", args.model, "--data", str(args.data),
        "--output", str(output), "--steps", str(steps), "--batch-size", str(batch),
        "--lr", "5e-4", "--warmup", "1", "--save-every", "0", "--seed", "0",
    ]  # fmt: skip


def run(name: str, launcher: list[str], command: list[str], workdir: Path, env: dict) -> dict:
    """One training run in a fresh process tree: wall time, peak RSS, median step time."""
    output = workdir / name
    started = time.perf_counter()
    process = subprocess.Popen([*launcher, *command], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name} failed:\n{stderr[-3000:]}")
    log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    batch = json.loads((output / "train_config.json").read_text())["batch_size"]
    step_seconds = [batch / record["triplets_per_s"] for record in log[1:]]
    result = {
        "command": " ".join([*launcher, *command]),
        # Other users' processes slow a run down; a 1-minute load above 2 means they ran.
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # Linux: KiB
        "step_s": [round(s, 2) for s in step_seconds],
        "median_step_s": round(statistics.median(step_seconds), 2),
        "losses": [round(record["loss"], 4) for record in log],
    }
    print(f"{name}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--batch", type=int, default=64, help="batch of the memory comparison")
    parser.add_argument("--mini-batch", type=int, default=8, help="GradCache texts per forward")
    parser.add_argument("--steps", type=int, default=3, help="steps of the memory comparison")
    parser.add_argument("--dp-batch", type=int, default=16, help="batch of the 2-vs-1 comparison")
    parser.add_argument("--dp-steps", type=int, default=4, help="steps of the 2-vs-1 comparison")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    python = [sys.executable]
    # torchrun gives each worker OMP_NUM_THREADS=1, so both sides use the 2 cores:
    # two 1-thread processes against one process with torch's default of 2 threads.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    gradcache = ["--mini-batch-size", str(args.mini_batch)]
    plan = {
        "plain": (python, args.batch, args.steps, []),
        "gradcache": (python, args.batch, args.steps, gradcache),
        "one_process": (python, args.dp_batch, args.dp_steps, []),
        "two_processes": (torchrun, args.dp_batch, args.dp_steps, []),
    }
    with tempfile.TemporaryDirectory(prefix="bench-gradcache-") as tmp:
        runs = {
            name: run(
                name,
                launcher,
                train_command(args, Path(tmp) / name, batch, steps) + extra,
                Path(tmp),
                env,
            )  # fmt: skip
            for name, (launcher, batch, steps, extra) in plan.items()
        }

    import torch

    results = {
        "what": f"lmembed train on {args.model}, bf16, CPU; see each run's command",
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": version("transformers"),
            "peft": version("peft"),
        },
        "torch_threads_single_process": torch.get_num_threads(),
        "runs": runs,
        "ratios": {
            "gradcache_vs_plain_peak_rss": ratio(runs["gradcache"], runs["plain"], "peak_rss_mib"),
            "gradcache_vs_plain_step_time": ratio(
                runs["gradcache"], runs["plain"], "median_step_s"
            ),
            "two_processes_vs_one_throughput": ratio(
                runs["one_process"], runs["two_processes"], "median_step_s"
            ),
        },
    }
    atomic_write_json(args.output, results)
    print(json.dumps(results["ratios"], indent=2))


def ratio(a: dict, b: dict, key: str) -> float:
    return round(a[key] / b[key], 3)


if __name__ == "__main__":
    main()
