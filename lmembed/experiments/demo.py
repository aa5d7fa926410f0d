"""The main job: fine-tune ``gemma-3-270m`` on NLI triplets and show before/after STS.

Sized to finish in about 15 minutes on a 2-core CPU: 100 steps x 32 triplets at
lr 5e-4, evaluated on a quick subset (stsb, biosses, sts17); ``full=True``
scores all nine tasks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lmembed.data import ALL_TASKS, QUICK_TASKS, resolve_data_dir
from lmembed.data.locate import find_training_data
from lmembed.evaluation import STSResult, compare, evaluate, save_results, write_report
from lmembed.evaluation.retrieval import RetrievalResult, compare_retrieval, evaluate_retrieval
from lmembed.io import atomic_write_text
from lmembed.model.embedder import Embedder
from lmembed.system import machine_summary
from lmembed.training.config import TrainConfig
from lmembed.training.trainer import train

logger = logging.getLogger("lmembed")

BASELINE_MODEL = "all-minilm-l6-v2"
# Paraphrase retrieval on every judged STSb-test document plus distractors (1,500 in all):
# the full 10,269-document task is `lmembed eval --tasks stsb-paraphrase`.
RETRIEVAL_TASK = "stsb-paraphrase-mini"


def demo_config(output: Path, data: str, model: str, steps: int) -> TrainConfig:
    """The demo recipe: the paper's loss and LoRA, a higher lr for a short CPU run."""
    return TrainConfig.from_flat(
        model=model,
        data=data,
        output=str(output / "adapter"),
        steps=steps,
        batch_size=32,
        lr=5e-4,
        warmup=10,
        save_every=25,
        resume=True,
    )


def run_demo(
    output: str | Path = "runs/demo",
    data_dir: str | Path | None = None,
    steps: int | None = None,
    full: bool = False,
    model: str = "gemma-3-270m",
) -> Path:
    """Evaluate, fine-tune, evaluate again; write ``report.md``/``report.png``; return the md path.

    Rerunning resumes: the adapter's checkpoint continues training, and base
    and baseline scores come from the score cache.
    """
    started = time.perf_counter()
    output = Path(output)
    root = resolve_data_dir(data_dir)
    tasks = list(ALL_TASKS if full else QUICK_TASKS)
    config = demo_config(output, find_training_data(root), model, steps or 100)
    data = ", ".join(config.dataset.data)
    logger.info("demo: %s on %s, %d steps, tasks %s", model, data, config.steps, tasks)

    def score(embedder: Embedder, name: str) -> STSResult:
        logger.info("demo: scoring %s", name)
        result = evaluate(embedder, tasks, root, batch_size=32)
        save_results(result, output / f"{name}.json")
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
    trained = train(config)
    tuned = Embedder.from_pretrained(adapter=trained.output)
    after, after_search = score(tuned, "after"), search(tuned, "after")

    print(compare(base, after))
    notes = {
        "command": f"lmembed demo{' --full' if full else ''} (steps={config.steps})",
        "training": f"{config.steps} steps x {config.batch_size} triplets from {data}, "
        f"lr {config.lr}, {config.embedding.dtype}",
        "hardware": machine_summary(),
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    md, _ = write_report(output, base, after, baseline, title=f"lmembed demo: {model}", notes=notes)
    retrieval = compare_retrieval(base_search, after_search)
    print(retrieval)
    text = md.read_text(encoding="utf-8")
    atomic_write_text(md, f"{text}\n## Retrieval ({RETRIEVAL_TASK})\n\n{retrieval}")
    return md
