"""Run an ``lmembed`` command in this process and record its peak memory phase by phase.

``python -m bench.memory_probe LOG -- train --config ...`` appends one JSON line per
phase to ``LOG`` (``LOG.rank<N>`` under torchrun): the phase, its peak RSS (Linux's
``VmHWM``, reset at each phase boundary through ``/proc/self/clear_refs``, so a phase's
peak is exact, not sampled), the RSS at its end, the largest peak of any child process so
far (the GGUF conversion runs in one), and the texts and tokens of a training step.
Phases are marked by wrapping lmembed's own functions (model conversion and loading, LoRA,
each optimizer step, evaluation, saving, export, encoding); nothing in lmembed changes,
except that ``LMEMBED_PROBE_KEEP_FREED=1`` makes the trainer keep freed memory in glibc's heap
(``lmembed.system.return_freed_memory`` skipped), as it did before it returned it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def status_mb() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    return {f: int(re.search(rf"{f}:\s+(\d+)", text).group(1)) / 1024 for f in STATUS_FIELDS}


class PhaseLog:
    """Closes a phase: writes its peak and end RSS, then resets the peak for the next."""

    def __init__(self, path: Path) -> None:
        rank = os.environ.get("RANK")
        self.path = path.with_name(f"{path.name}.rank{rank}") if rank else path
        self.began = time.perf_counter()

    def close(self, phase: str, **extra: Any) -> None:
        now = status_mb()
        record = {"phase": phase, "peak_mb": now["VmHWM"], "rss_mb": now["VmRSS"],
                  "anon_mb": now["RssAnon"], "file_mb": now["RssFile"],
                  "children_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "t": round(time.perf_counter() - self.began, 2), **extra}  # fmt: skip
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        Path("/proc/self/clear_refs").write_text("5")


def wrap(log: PhaseLog, owner: Any, name: str, phase: str) -> None:
    """Close the phase running before ``owner.name`` is called and ``phase`` when it returns."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def marked(*args: Any, **kwargs: Any) -> Any:
        log.close("other")
        result = original(*args, **kwargs)
        log.close(phase)
        return result

    setattr(owner, name, marked)


def instrument(log: PhaseLog) -> None:
    import lmembed.export as export
    import lmembed.model.embedder as embedder
    import lmembed.model.loading as loading
    import lmembed.training.monitor as monitor
    import lmembed.training.trainer as trainer

    wrap(log, loading, "gguf_cache", "convert GGUF")
    wrap(log, loading, "cast_cache", "cast copy")
    for module in (loading, embedder, trainer):
        wrap(log, module, "load_backbone", "load")
    wrap(log, trainer, "attach_lora", "LoRA")
    wrap(log, trainer, "save_adapters", "save")
    wrap(log, monitor.RunMonitor, "evaluate", "evaluate")
    wrap(log, embedder.Embedder, "encode", "encode")
    wrap(log, export, "export", "export")
    steps = {"done": 0}
    original = trainer.forward_backward

    def step(embedder_: Any, loss_fn: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        texts = [t for part in batch if part for t in part]
        tokens = sum(map(len, embedder_.tokenize(texts)))
        log.close("other")
        loss = original(embedder_, loss_fn, batch, *args, **kwargs)
        steps["done"] += 1
        phase = "first step" if steps["done"] == 1 else "steady training"
        log.close(phase, step=steps["done"], texts=len(texts), tokens=tokens)
        return loss

    trainer.forward_backward = step
    if os.environ.get("LMEMBED_PROBE_KEEP_FREED") == "1":
        trainer.return_freed_memory = lambda: None


def main(argv: list[str]) -> None:
    log_path, separator, *command = argv
    if separator != "--":
        raise SystemExit("usage: python -m bench.memory_probe LOG -- LMEMBED_ARGS...")
    log = PhaseLog(Path(log_path))
    log.close("start")
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import lmembed.cli

    log.close("import")
    instrument(log)
    sys.argv = ["lmembed", *command]
    try:
        lmembed.cli.main()
    finally:
        log.close("end")


if __name__ == "__main__":
    main(sys.argv[1:])
