"""``lmembed.system``: where inference runs, and the process-wide memory settings."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from lmembed import system


def test_accelerator_is_the_gpu_when_there_is_one(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert system.accelerator() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert system.accelerator() is None


def _imported_capacity(env: dict[str, str]) -> str:
    code = "import os, lmembed; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def test_importing_lmembed_bounds_onednn_kernel_cache_unless_the_user_did() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    assert _imported_capacity(env) == str(system.ONEDNN_CACHE_CAPACITY)
    assert _imported_capacity({**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "8"}) == "8"


FRAGMENT_SCRIPT = r"""
import re
from lmembed.system import return_freed_memory

def rss_mb():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024

# 64 KB blocks (below glibc's mmap threshold, so from its heap) with a small block kept
# between each two: freeing the large ones leaves holes that glibc cannot shrink the heap by.
freed, kept = [], []
for _ in range(4000):
    freed.append(bytearray(65536))
    kept.append(bytearray(1024))
held = rss_mb()
del freed
print(held, rss_mb(), end=" ")
return_freed_memory()
print(rss_mb())
"""


def test_returning_freed_memory_gives_heap_holes_back_to_the_os() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", FRAGMENT_SCRIPT], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    held, after_free, returned = map(float, done.stdout.split())
    assert after_free > held - 50, "glibc kept the holes: the case this function is for"
    assert returned < after_free - 200, (held, after_free, returned)
