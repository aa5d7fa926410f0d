"""``python -m bench.diagnostics.gpu_check --smoke`` runs where CI runs: the script a lent
GPU gets must not break unnoticed between the sessions that have one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_trains_both_runs(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.diagnostics.gpu_check", "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["runs"]) == {"plain_b8", "gradcache_b16_m4"}
    for run in report["runs"].values():
        assert run["steps"] == 3 and run["median_step_s"] > 0
        assert math.isfinite(run["final_loss"])
    parity = report["parity"]  # on CPU both sides are the CPU: the same vectors
    assert parity["texts"] == 256 and parity["min_cosine"] > 0.9999
