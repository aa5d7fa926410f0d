"""Helpers shared by the benchmarks: environment, worker processes, statistics, docs.

A benchmark runs each measured system in a fresh worker process (``run_worker``), so model
loads and peak memory never mix, and alternates the systems over repeats. Ratios are taken
per repeat (systems measured back to back) and summarised by median, min and max. It ends
with ``publish``: its results to ``bench/results/<name>.json`` and the section its
``render`` makes from them to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lmembed.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
IMAGES = ROOT / "docs" / "img"
DOC_TITLE = "# Benchmarks\n"


def data_dir() -> Path:
    """``$LMEMBED_DATA_DIR`` (set by ``make``), else the shared data next to the repo."""
    return Path(os.environ.get("LMEMBED_DATA_DIR") or ROOT.parent / "shared" / "data")


def demo_config():
    """The demo recipe (``configs/gemma-3-270m-cpu.yaml``) on the shared NLI triplets."""
    from lmembed.training.config import load_config

    return load_config(ROOT / "configs" / "gemma-3-270m-cpu.yaml", data=str(nli_path()),
                       output="unused")  # fmt: skip


def nli_path() -> Path:
    path = data_dir() / "nli" / "snli_devtest_triplets_tok.csv.gz"
    if not path.is_file():
        sys.exit(f"{path} not found: set LMEMBED_DATA_DIR to the shared data folder")
    return path


def environment() -> dict:
    """Hardware and versions (``lmembed.system``), the date and the command, for every result."""
    from lmembed.system import machine, package_versions

    return {
        **machine(),
        "versions": package_versions(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
    }


def available_gib() -> float:
    """Memory the kernel can hand out now (``MemAvailable``), in GiB."""
    text = Path("/proc/meminfo").read_text()
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 2**20 if match else float("inf")


def command_line() -> str:
    """The command that ran this benchmark (``python -m bench.NAME ...``), with the Python
    relative to the repository root."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    script = ["-m", spec.name] if spec is not None else [os.path.relpath(sys.argv[0], ROOT)]
    python = os.path.relpath(sys.executable, ROOT) if ".venv" in sys.executable else "python"
    return shlex.join([python, *script, *sys.argv[1:]])


# --- worker processes -----------------------------------------------------------------------


def worker_command(
    module: str, name: str, params: dict, result: str | Path, launcher: Sequence[str] = ()
) -> list[str]:
    """The command that runs worker ``name`` of benchmark ``module`` (``bench.bench_train``)
    with ``params``, writing its result to ``result``; ``launcher``: the Python (and its
    options) that runs the module, ``sys.executable`` by default."""
    return [*(launcher or [sys.executable]), "-m", module, "--worker", name,
            "--params", json.dumps(params), "--result", str(result)]  # fmt: skip


def worker_env() -> dict[str, str]:
    """A worker's environment: offline, no tokenizer threads, and the repository root on
    the path so ``-m bench.NAME`` imports from any working directory."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": path}  # fmt: skip


def run_worker(module: str, name: str, params: dict) -> dict:
    """Run worker ``name`` of benchmark ``module`` in a fresh process; its result plus its
    peak RSS.

    Peak RSS is the child's ``ru_maxrss`` (from ``os.wait4``): the whole life of the
    process, model load included.
    """
    with tempfile.TemporaryDirectory(prefix="lmembed-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        params = {**params, "workdir": tmp}
        command = worker_command(module, name, params, result_path)
        process = subprocess.Popen(
            command, env=worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        stderr = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"worker {name} failed:\n{stderr[-4000:]}")
        result = json.loads(result_path.read_text())
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024)  # Linux reports KiB
    return result


def worker_main(workers: dict[str, Callable[..., dict]]) -> bool:
    """If this process was started by ``run_worker``, run the worker and return True."""
    if "--worker" not in sys.argv:
        return False
    args = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=True))
    result = workers[args["--worker"]](**json.loads(args["--params"]))
    Path(args["--result"]).write_text(json.dumps(result))
    return True


def alternating(systems: Sequence[str], repeat: int) -> list[str]:
    """Run order of repeat ``repeat``: the list rotated, so no system always goes first."""
    shift = repeat % len(systems)
    return [*systems[shift:], *systems[:shift]]


def timed_rounds(
    encoders: dict[str, Callable[[list[str]], np.ndarray]],
    texts: list[str],
    repeats: int,
    warm_up: int,
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Each encoder once over the first ``warm_up`` texts (untimed: first-call allocations,
    lazy imports), then over ``texts`` once per repeat, in ``alternating`` order: the
    seconds per encoder and repeat, and each encoder's vectors (float32) from its last."""
    for encode in encoders.values():
        encode(texts[:warm_up])
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    vectors = {}
    for repeat in range(repeats):
        for name in alternating(list(encoders), repeat):
            tick = time.perf_counter()
            vectors[name] = np.asarray(encoders[name](texts), dtype=np.float32)
            seconds[name].append(time.perf_counter() - tick)
            print(f"{name}: {len(texts) / seconds[name][-1]:.1f} sentences/s", flush=True)
    return seconds, vectors


# --- texts and vectors ----------------------------------------------------------------------


def sts_sentences(count: int) -> list[str]:
    """The first ``count`` distinct sentences of STSb test (the texts every encoding bench
    times), in file order."""
    from lmembed.data.sts import load_sts

    task = load_sts("stsb", data_dir())
    distinct = list(dict.fromkeys([*task.sentences1, *task.sentences2]))
    if len(distinct) < count:
        raise SystemExit(f"STSb test has only {len(distinct)} distinct sentences, not {count}")
    return distinct[:count]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two matrices of vectors."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", a, b)


# --- statistics -----------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int = 3) -> dict:
    """Median, min and max (and the values) of per-repeat measurements."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "values": [round(v, digits) for v in values],
    }


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """``spread`` of per-repeat ratios (repeat i of one system over repeat i of the other)."""
    return spread([a / b for a, b in zip(numerators, denominators, strict=True)])


def fmt_ratio(ratio: dict) -> str:
    return f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"


def met(ratio: dict, target: float) -> str:
    """Target verdict on the median ratio."""
    verdict = "met" if ratio["median"] >= target else "missed"
    return f"**{verdict}** (target ≥ {target:g}x)"


# --- results and docs -----------------------------------------------------------------------


def save_result(name: str, result: dict) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, result)
    return path


def load_result(name: str) -> dict | None:
    """``bench/results/<name>.json``, or None when no run has written it."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def publish(name: str, heading: str, results: dict, render: Callable[[dict], str]) -> str:
    """The step a benchmark ends with: ``results`` (its ``measure``) to
    ``bench/results/<name>.json`` and ``render(results)`` as the ``## heading`` section of
    docs/benchmarks.md; returns the section's body. Rendering reads the results alone, so
    the saved JSON gives the same section again (tests/test_bench_render.py)."""
    save_result(name, results)
    body = render(results)
    replace_section(heading, body)
    return body


def environment_block(env: dict, note: str = "", target: str = "make bench") -> str:
    """Markdown lines that say where, with what and how a section's numbers were measured;
    ``target`` is what runs the benchmark (a make target, or ``python -m bench.NAME``)."""
    v = env["versions"]
    bf16 = {True: ", native bf16", False: ", no native bf16 (emulated)"}.get(env.get("native_bf16"))
    lines = [
        f"- Hardware: {env['cpu']}, {env['cores']} cores, {env['ram_gib']} GiB RAM, "
        f"torch threads {env['torch_threads']}{bf16 or ''}",
        f"- Versions: Python {v['python']}, torch {v['torch']}, transformers "
        f"{v['transformers']}, peft {v['peft']}, sentence-transformers "
        f"{v['sentence-transformers']}",
        f"- Command (`{target}` runs it under `flock /tmp/lmembed-cpu.lock`): "
        f"`{env['command']}`, {env['date']}",
    ]
    if note:
        lines.append(f"- {note}")
    return "\n".join(lines)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; the first column left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def with_section(text: str, heading: str, body: str) -> str:
    """``text`` (the benchmarks page) with its ``## heading`` section replaced by ``body``
    (or appended). Other sections, written by other scripts or by hand, stay byte for byte.
    """
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    return text.rstrip() + "\n\n" + section


def replace_section(heading: str, body: str, path: Path = DOC) -> None:
    """Replace the ``## heading`` section of the benchmarks page (or append it)."""
    text = path.read_text(encoding="utf-8") if path.exists() else DOC_TITLE
    atomic_write_text(path, with_section(text, heading, body))
