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
import time

from common import (
    IMAGES,
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
    args = parser.parse_args()

    from lmembed.evaluation.sizes import evaluate_sizes
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
    result = {"environment": environment(), "elapsed_s": round(elapsed, 1), **table.to_dict()}
    save_result("sizes", result)
    atomic_write_bytes(IMAGES / "bench-sizes.png", table.plot())
    label = args.model + (f" + adapter {args.adapter}" if args.adapter else " (base)")
    body = "\n".join([
        f"STS Spearman x100 of {label} at each size and precision ({args.tasks} tasks; "
        "int8 ranges calibrated on each task's own sentences; binary scored by Hamming "
        f"distance). One encoding pass, {elapsed / 60:.1f} min.",
        "",
        table.to_markdown(),
        "![quality against size](img/bench-sizes.png)",
        "",
        environment_block(result["environment"], target="python bench/bench_sizes.py"),
    ])  # fmt: skip
    replace_section(HEADING, body)


if __name__ == "__main__":
    main()
