"""Quality against size: STS Spearman at each dims x precision (``evaluate_sizes``).

Each text is embedded once at full size; every smaller size or precision is then
derived from those vectors (truncate, re-normalise, quantise), so the table costs
one encoding pass. Without a Matryoshka-trained adapter the rows show what plain
truncation costs; with one (``--adapter``), what the training buys.

    flock /tmp/lmembed-cpu.lock .venv/bin/python bench/bench_sizes.py \
        --model smollm2-135m --tasks quick --dims 576,256,128,64 \
        --precisions float32,int8,binary

writes ``bench/results/sizes.json``, ``docs/img/bench-sizes.png`` and the "Quality
against size" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import time

from common import (
    IMAGES,
    RESULTS,
    data_dir,
    environment,
    environment_block,
    replace_section,
    save_result,
)

from lmembed.io import atomic_write_bytes

HEADING = "Quality against size"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--tasks", default="quick")
    parser.add_argument("--dims", default="576,256,128,64")
    parser.add_argument("--precisions", default="float32,int8,binary")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--from-results", action="store_true",
                        help="only rewrite the docs section from bench/results/sizes.json")
    args = parser.parse_args()

    from lmembed.evaluation.sizes import SizeRow, SizeTable, evaluate_sizes

    if args.from_results:
        result = json.loads((RESULTS / "sizes.json").read_text())
        rows = [SizeRow(r["dims"], r["precision"], r["bytes"], r["scores"]) for r in result["rows"]]
        write_docs(SizeTable(result["spec"], rows), result)
        return

    from lmembed.model import Embedder

    embedder = Embedder.from_pretrained(model=args.model, adapter=args.adapter)
    started = time.perf_counter()
    table = evaluate_sizes(
        embedder,
        [int(d) for d in args.dims.split(",")],
        args.precisions.split(","),
        tasks=args.tasks,
        data_dir=data_dir(),
        batch_size=args.batch_size,
    )
    elapsed = time.perf_counter() - started
    result = {"environment": environment(), "elapsed_s": round(elapsed, 1), "tasks": args.tasks,
              **table.to_dict()}  # fmt: skip
    save_result("sizes", result)
    write_docs(table, result)


def write_docs(table, result: dict) -> None:
    """The plot and the "Quality against size" section, from one run's result."""
    atomic_write_bytes(IMAGES / "bench-sizes.png", table.plot())
    spec = result["spec"]
    label = spec["model"] + (f" + adapter {spec['adapter']}" if spec.get("adapter") else " (base)")
    body = "\n".join([
        f"STS Spearman x100 of {label} at each size and precision "
        f"({result.get('tasks', 'quick')} tasks; int8 ranges calibrated on each task's own "
        "sentences; binary scored by Hamming distance). One encoding pass, "
        f"{result['elapsed_s'] / 60:.1f} min."
        + ("" if spec.get("adapter") else " The base model has no contrastive training, so "
           "the rows show what truncation and quantisation cost, not a usable embedding; "
           "rerun with a Matryoshka-trained `--adapter` for the sizes it was trained for."),
        "",
        table.to_markdown(),
        "![quality against size](img/bench-sizes.png)",
        "",
        environment_block(result["environment"], target="python bench/bench_sizes.py"),
    ])  # fmt: skip
    replace_section(HEADING, body)


if __name__ == "__main__":
    main()
