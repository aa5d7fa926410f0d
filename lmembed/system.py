"""What ran a result: hardware and library versions, recorded next to every number."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("lmembed", "torch", "transformers", "peft", "sentence-transformers")


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def native_bf16() -> bool:
    """Whether bf16 matmuls run in hardware here: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 or AMX. Elsewhere torch emulates bf16, several times slower than fp32
    (bench/bench_roofline.py measures both peaks)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


# oneDNN's default, 1,024 kernels, keeps one set per input shape; batches of varying length
# then grow a process by megabytes a step for as long as new lengths come
# (bench/bench_step_memory.py measures capacities against steps per second).
ONEDNN_CACHE_CAPACITY = 64


def bound_kernel_cache() -> None:
    """Cap oneDNN's cache of compiled kernels (bf16 matmuls on a CPU) unless the user set
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``; oneDNN reads it at its first kernel, so this runs
    when lmembed is imported."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): their allocators return memory themselves
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def return_freed_memory() -> None:
    """Hand the free pages of glibc's heap back to the OS (``malloc_trim``). A training step
    frees hundreds of MB of activations of a batch-dependent shape; glibc keeps them
    scattered in its heap, so without this a process's RSS climbs for dozens of steps."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def accelerator() -> torch.device | None:
    """The GPU to encode on when there is one; ``None`` keeps the model on the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else None


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def machine() -> dict[str, object]:
    """CPU, cores, RAM, torch threads and GPU (if any) of this process's machine."""
    return {
        "cpu": cpu_model(),
        "native_bf16": native_bf16(),
        "cores": os.cpu_count(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def machine_summary() -> str:
    """One line for reports, e.g.
    ``AMD EPYC (2 cores, 23.4 GiB RAM, 2 torch threads, native bf16, no GPU)``."""
    info = machine()
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ", no GPU"
    bf16 = "native bf16" if info["native_bf16"] else "no native bf16"
    return (
        f"{info['cpu']} ({info['cores']} cores, {info['ram_gib']} GiB RAM, "
        f"{info['torch_threads']} torch threads, {bf16}{gpu})"
    )
