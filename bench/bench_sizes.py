"""Quality against size: STS Spearman at each dims x precision (``evaluate_sizes``).

Each text is embedded once at full size; every smaller size or precision is then
derived from those vectors (truncate, re-normalise, quantise), so each model costs
one encoding pass. Give several ``--adapter LABEL=PATH`` to compare adapters trained
at the same budget (plain, then Matryoshka): the section then checks issue 16's
targets against the first one's full-size float32 score.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_sizes \
        --model gemma-3-270m --tasks all --dims 640,256,128,64 \
        --precisions float32,int8,binary --retrieval stsb-paraphrase-mini \
        --adapter plain=runs/demo/adapter --adapter matryoshka=runs/demo-mrl

writes ``bench/results/sizes.json``, ``docs/img/bench-sizes-LABEL.png`` and the
"Quality against size" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import time

from bench.common import (
    IMAGES,
    data_dir,
    environment,
    environment_block,
    load_result,
    publish,
)
from lmembed.io import atomic_write_bytes

NAME, HEADING = "sizes", "Quality against size"
# Issue 16: Matryoshka at 128 dims within 1.5 points of full-size plain; int8 within 0.3.
TARGET_DIMS, TARGET_GAP, INT8_GAP = 128, 1.5, 0.3


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="an adapter to score (repeat to compare); none: the base model",
    )
    parser.add_argument("--tasks", default="quick")
    parser.add_argument(
        "--retrieval", default="", help="retrieval tasks (NDCG@10), comma-separated; none if empty"
    )
    parser.add_argument("--dims", default="576,256,128,64")
    parser.add_argument("--precisions", default="float32,int8,binary")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="only rewrite the docs section from bench/results/sizes.json",
    )
    return parser


def measure(args: argparse.Namespace) -> dict:
    from lmembed.evaluation.sizes import evaluate_sizes
    from lmembed.model import Embedder

    adapters = [item.partition("=")[::2] for item in args.adapter] or [("base", None)]
    runs = []
    for label, adapter in adapters:
        embedder = Embedder.from_pretrained(model=args.model, adapter=adapter or None)
        started = time.perf_counter()
        table = evaluate_sizes(
            embedder,
            [int(d) for d in args.dims.split(",")],
            args.precisions.split(","),
            tasks=args.tasks,
            data_dir=data_dir(),
            retrieval=[t for t in args.retrieval.split(",") if t],
            batch_size=args.batch_size,
        )
        del embedder
        runs.append({"label": label, "elapsed_s": round(time.perf_counter() - started, 1),
                     **table.to_dict()})  # fmt: skip
    return {"environment": environment(), "tasks": args.tasks, "retrieval": args.retrieval,
            "runs": runs}  # fmt: skip


def size_tables(result: dict) -> dict:
    """Each run's ``SizeTable``, by label, from its saved rows."""
    from lmembed.evaluation.sizes import SizeRow, SizeTable

    return {run["label"]: SizeTable(run["spec"], [
        SizeRow(r["dims"], r["precision"], r["bytes"], r["scores"]) for r in run["rows"]
    ]) for run in result["runs"]}  # fmt: skip


def plot(result: dict) -> None:
    """``docs/img/bench-sizes-LABEL.png`` for each run."""
    for label, table in size_tables(result).items():
        atomic_write_bytes(IMAGES / f"bench-sizes-{label}.png", table.plot())


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = load_result(NAME) if args.from_results else measure(args)
    plot(result)
    publish(NAME, HEADING, result, render)


def targets(tables: dict) -> list[str]:
    """Issue 16's targets, each against the first table's full-size float32 average."""
    first_label, first = next(iter(tables.items()))
    full = max(r.dims for r in first.rows)
    reference = next(r.average for r in first.rows if r.dims == full and r.precision == "float32")
    verdicts = []
    for label, table in tables.items():
        score = {(r.dims, r.precision): r.average for r in table.rows}
        if label != first_label and (TARGET_DIMS, "float32") in score:
            small = score[TARGET_DIMS, "float32"]
            verdict = "met" if reference - small <= TARGET_GAP else "not met"
            verdicts.append(
                f"- {label} at {TARGET_DIMS} dims: {small:.2f}, {reference - small:+.2f} below "
                f"the reference (target: within {TARGET_GAP}): **{verdict}**."
            )
        gaps = [score[d, "float32"] - score[d, "int8"] for d, p in score if p == "int8"]
        if gaps:
            verdict = "met" if max(gaps) <= INT8_GAP else "not met"
            verdicts.append(
                f"- {label}, int8 against float32 at the same size: largest loss "
                f"{max(gaps):.2f} (target: within {INT8_GAP}): **{verdict}**."
            )
    if not verdicts:
        return []
    return [f"Reference: {first_label}, {full} dims, float32: **{reference:.2f}**.", "", *verdicts]


def render(results: dict) -> str:
    """The "Quality against size" section (the plots are ``plot``'s)."""
    tables = size_tables(results)
    parts = []
    for run in results["runs"]:
        label, table = run["label"], tables[run["label"]]
        spec = run["spec"]
        name = spec["model"] + (f" + adapter `{spec['adapter']}`" if spec.get("adapter") else "")
        parts += [f"### {label}: {name}", "",
                  f"One encoding pass, {run['elapsed_s'] / 60:.1f} min.", "",
                  table.to_markdown(), f"![quality against size: {label}]"
                  f"(img/bench-sizes-{label}.png)", ""]  # fmt: skip
    base_only = all(not run["spec"].get("adapter") for run in results["runs"])
    return "\n".join([
        f"STS Spearman x100 at each size and precision ({results['tasks']} tasks; int8 ranges "
        "calibrated on each task's own sentences; binary scored by Hamming distance); the "
        "average is over the STS tasks, retrieval NDCG@10 x100 (if any) stands beside it."
        + (" The base model has no contrastive training, so the rows show what truncation "
           "and quantisation cost, not a usable embedding." if base_only else ""),
        "",
        *targets(tables),
        "",
        *parts,
        environment_block(results["environment"], target="python -m bench.bench_sizes"),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
