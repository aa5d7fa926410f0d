"""The main job: fine-tune ``gemma-3-270m`` on NLI triplets and show before/after STS.

Recipes (``RECIPES``), each mirrored by a file in ``configs/``: ``demo`` (LoRA on every
linear layer, 64 steps x 32 triplets at lr 5e-4, sized for a 2-core CPU, scored on a quick
subset: stsb, biosses, sts17) and, with ``full=True``, ``distill`` (the 30-minute recipe
with all-MiniLM-L6-v2 as teacher, scored on all nine tasks). docs/quality.md says which
options STSb dev chose and which are priors.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lmembed.data import ALL_TASKS, QUICK_TASKS, resolve_data_dir
from lmembed.data.locate import find_training_data
from lmembed.evaluation import STSResult, evaluate, write_report
from lmembed.evaluation.retrieval import RetrievalResult, evaluate_retrieval
from lmembed.evaluation.sts import format_score
from lmembed.io import atomic_write_bytes, atomic_write_text
from lmembed.model.embedder import Embedder
from lmembed.system import machine_summary, return_freed_memory
from lmembed.training.config import TrainConfig
from lmembed.training.run_dir import RunDir
from lmembed.training.trainer import train

logger = logging.getLogger("lmembed")

BASELINE_MODEL = "all-minilm-l6-v2"
# Paraphrase retrieval on every judged STSb-test document plus distractors (1,500 in all):
# the full 10,269-document task is `lmembed eval --tasks stsb-paraphrase`.
RETRIEVAL_TASK = "stsb-paraphrase-mini"


# The paper's loss with a higher lr for short CPU runs and LoRA on every linear layer, which
# costs more per step: in fp32, 64 steps take what 100 q/v-only steps do, 140 what 220 do.
# configs/gemma-3-270m-cpu.yaml, -cpu-best.yaml and -cpu-distill.yaml hold the same
# options (tests/experiments/test_demo.py). They score STSb dev before training and every
# 16/20 steps, for the report's curve (evaluations leave the adapter bit-identical).
DEMO_RECIPE: dict[str, Any] = {
    "steps": 64, "batch_size": 32, "lr": 5e-4, "warmup": 10, "save_every": 25,
    "lora_targets": ["all-linear"], "eval_every": 16, "eval_at_start": True,
}  # fmt: skip
# The 30-minute budget: its step count is what fits the budget without checkpointing.
BEST_RECIPE: dict[str, Any] = {**DEMO_RECIPE, "steps": 140, "ema_decay": 0.95, "eval_every": 20}
RECIPES: dict[str, dict[str, Any]] = {
    # Activation checkpointing: the same adapter in a fraction of the memory (the demo
    # should run on a laptop), for one more forward pass per step (bench/bench_memory.py).
    "demo": {**DEMO_RECIPE, "activation_checkpointing": 1},
    "best": BEST_RECIPE,
    # With all-MiniLM-L6-v2 as teacher, 2 steps fewer for the teacher's encoding: chosen
    # over "best" on STSb dev (docs/quality.md, "Distillation from a teacher").
    "distill": {**BEST_RECIPE, "steps": 138, "teacher": BASELINE_MODEL, "teacher_dtype": "fp32"},
}


def demo_config(
    output: Path,
    data: str,
    model: str,
    recipe: str = "demo",
    steps: int | None = None,
    **options: Any,
) -> TrainConfig:
    """A recipe of ``RECIPES`` on ``data``; ``steps`` and ``options`` override the recipe's."""
    options = {**RECIPES[recipe], **({"steps": steps} if steps else {}), **options}
    return TrainConfig.from_flat(
        model=model, data=data, output=str(output / "adapter"), resume=True, **options
    )


def run_demo(
    output: str | Path | None = None,
    data_dir: str | Path | None = None,
    steps: int | None = None,
    full: bool = False,
    model: str = "gemma-3-270m",
    report_to: list[str] | None = None,
) -> Path:
    """Evaluate, fine-tune, evaluate again; write ``report.md``/``report.png``; return the md path.

    ``full``: the ``distill`` recipe and all nine tasks (default folder ``runs/demo-full``).
    Rerunning resumes: the adapter's checkpoint continues training, and base
    and baseline scores come from the score cache. STSb dev is scored during training
    (``report_to``: its trackers); the report shows its curve.
    """
    started = time.perf_counter()
    output = Path(output or ("runs/demo-full" if full else "runs/demo"))
    root = resolve_data_dir(data_dir)
    tasks = list(ALL_TASKS if full else QUICK_TASKS)
    recipe = "distill" if full else "demo"
    trackers = {"report_to": report_to} if report_to else {}
    config = demo_config(
        output, find_training_data(root), model, recipe, steps, eval_data_dir=str(root), **trackers
    )
    data = ", ".join(config.dataset.data)
    logger.info("demo: %s on %s, %d steps, tasks %s", model, data, config.steps, tasks)

    def score(embedder: Embedder, name: str) -> STSResult:
        logger.info("demo: scoring %s", name)
        result = evaluate(embedder, tasks, root, batch_size=32)
        result.save(output / f"{name}.json")
        return result

    def search(embedder: Embedder, name: str) -> RetrievalResult:
        logger.info("demo: retrieval %s", name)
        result = evaluate_retrieval(embedder, RETRIEVAL_TASK, root, batch_size=32)
        result.save(output / f"{name}-retrieval.json")
        return result

    base_embedder = Embedder.from_spec(config.embedding)
    base, base_search = score(base_embedder, "before"), search(base_embedder, "before")
    del base_embedder
    baseline = score(Embedder.from_pretrained(BASELINE_MODEL, dtype="fp32"), "baseline")
    return_freed_memory()  # what the base model and MiniLM freed, before training
    trained = train(config)
    return_freed_memory()  # the trainer's model, before the tuned one loads
    tuned = Embedder.from_pretrained(adapter=trained.output)
    after, after_search = score(tuned, "after"), search(tuned, "after")

    print(after.compare(base))
    notes = {
        "command": f"lmembed demo{' --full' if full else ''} (steps={config.steps})",
        "training": f"recipe {recipe!r} ({RECIPES[recipe]}) on {data}, "
        f"{config.embedding.dtype}, {trained.seconds:.0f} s",
        "hardware": machine_summary(),
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    md, _ = write_report(output, base, after, baseline, title=f"lmembed demo: {model}", notes=notes)
    retrieval = after_search.compare(base_search)
    print(retrieval)
    text = md.read_text(encoding="utf-8")
    curve = trained.output / "report.png"
    atomic_write_text(
        md,
        f"{text}\n## Retrieval ({RETRIEVAL_TASK})\n\n{retrieval}\n## During training\n\n"
        f"{_curve_table(trained.output)}\n![loss and STSb dev against step]"
        f"({curve.relative_to(output).as_posix()})\n",
    )
    return md


def _curve_table(run: Path) -> str:
    """STSb dev (Spearman x100) at each evaluated step, and the evaluation time."""
    evaluations = RunDir(run).evaluations()
    lines = ["| step | STSb dev |", "|---:|---:|"]
    lines += [f"| {e['step']} | {e['metrics']['stsb-dev']:.2f} |" for e in evaluations]
    seconds = sum(e["seconds"] for e in evaluations)
    return "\n".join(lines) + f"\n\n{len(evaluations)} evaluations, {seconds:.0f} s in all.\n"


def results_table(folder: str | Path) -> str:
    """The README's results table, from a demo folder's result files (``publish_results``):
    Spearman x100 per quick task before and after fine-tuning, the MiniLM baseline, STSb dev
    during training and paraphrase retrieval."""
    folder = Path(folder)
    before, after, baseline = (
        STSResult.from_dict(json.loads((folder / f"{name}.json").read_text(encoding="utf-8")))
        for name in ("before", "after", "baseline")
    )
    searched = {
        name: RetrievalResult.load(folder / f"{name}-retrieval.json")
        for name in ("before", "after")
    }
    curve = RunDir(folder / "adapter").evaluations()
    model = before.spec["model"]
    rows = [
        f"| Spearman x100 | {model} | + lmembed LoRA ({curve[-1]['step']} steps) | "
        f"{baseline.spec['model']} |",
        "|---|---:|---:|---:|",
    ]
    for task in [*after.tasks, "average"]:
        cells = [format_score(r.score(task)) for r in (before, after, baseline)]
        rows.append(f"| {task} | {' | '.join(cells)} |")
    dev = f"{curve[0]['metrics']['stsb-dev']:.2f}", f"{curve[-1]['metrics']['stsb-dev']:.2f}"
    rows.append(f"| STSb dev (the dev set) | {dev[0]} | {dev[1]} | |")
    ndcg = [f"{searched[n].tasks[RETRIEVAL_TASK].metrics['ndcg@10']:.2f}" for n in searched]
    rows.append(f"| {RETRIEVAL_TASK} NDCG@10 | {ndcg[0]} | {ndcg[1]} | |")
    return "\n".join(rows) + "\n"


def publish_results(demo: str | Path, folder: str | Path) -> Path:
    """Copy a finished demo's result files into ``folder`` (docs/results/demo), the files
    the README's results table is made from; the run's own files go to ``adapter/``, so
    the reports' links hold."""
    demo, folder = Path(demo), Path(folder)
    names = ["before.json", "after.json", "baseline.json", "before-retrieval.json",
             "after-retrieval.json", "report.md", "report.png"]  # fmt: skip
    run = ["eval.jsonl", "log.jsonl", "train_config.json", "report.md", "report.png"]
    for name in [*names, *(f"adapter/{n}" for n in run)]:
        atomic_write_bytes(folder / name, (demo / name).read_bytes())
    return folder
