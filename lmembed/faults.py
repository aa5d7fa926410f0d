"""Named points where a test can kill or pause training, chosen by an environment variable.

``LMEMBED_FAULT="NAME:N"`` SIGKILLs this process the N-th time it reaches the
point ``NAME`` (``forward``, ``backward``, ``optimizer_step``, ``checkpoint_write``,
``checkpoint_swap``, ``evaluate``: inside an evaluation, ``best_save``: between a new
best's adapter and its ``best.json``, ``teacher_write``: between a teacher-cache part's
vectors and its keys); ``NAME:N:pause=SECONDS`` sleeps there instead, so a timer
kill lands inside that point. ``LMEMBED_FAULT_RANK`` limits it to one rank of a
``torchrun`` job. Unset, a point costs one dictionary lookup: kill tests exercise
the real code paths and nothing else changes.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

POINTS = (
    "forward",
    "backward",
    "optimizer_step",
    "checkpoint_write",
    "checkpoint_swap",
    "evaluate",
    "best_save",
    "teacher_write",
)
_reached: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """Kill (or pause) here if ``LMEMBED_FAULT`` names this point and its count is reached."""
    spec = os.environ.get("LMEMBED_FAULT")
    if not spec:
        return
    target, count, *action = spec.split(":")
    if target not in POINTS:
        raise ValueError(f"LMEMBED_FAULT={spec!r}: unknown point {target!r}; one of {POINTS}")
    if target != name or not _this_rank():
        return
    _reached[name] += 1
    if _reached[name] != int(count):
        return
    if action and action[0].startswith("pause="):
        time.sleep(float(action[0].removeprefix("pause=")))
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _this_rank() -> bool:
    wanted = os.environ.get("LMEMBED_FAULT_RANK")
    return wanted is None or wanted == os.environ.get("RANK", "0")
