"""Safetensors copies of GGUF models, written once, each by a process of its own.

GGUF files load slowly (dequantisation, 15-60 s) and transformers refuses to
``save_pretrained`` them, so the first load writes a dequantised fp32 copy to
``cache_root()/models`` and later loads read that in seconds. The first bf16/fp16 load also
writes a copy in that dtype beside it, because safetensors are memory-mapped: a load in the
file's own dtype maps the weights, while a cast reads and rounds all of them again each
start (for gemma-3-270m, a 2.3 GB peak instead of 1 GB). Rounding once when the copy is
written is the same rounding as at every load.

Both copies are written by ``python -m lmembed.model.gguf_cache`` in a child process.
Dequantising gemma-3-270m passes through 2-3 GB (the fp32 weights, gguf's reader with a
numpy view per tokenizer entry, and copies of the 262k x 640 embedding matrix), and glibc
keeps most of what is freed in the process's heap: a process that converted in place would
carry over 1 GB it no longer uses into the training or serving that follows.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
import transformers.modeling_gguf_pytorch_utils as gguf_loading
from safetensors.torch import save_file, save_model
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from lmembed.io import atomic_directory, atomic_write_json, cache_root
from lmembed.model.spec import DTYPES

logger = logging.getLogger("lmembed")

SOURCE_FILE = "lmembed_source.json"  # marks a finished cache folder


def gguf_cache(gguf: Path) -> Path:
    """The fp32 safetensors folder of ``gguf``, written on first use."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    folder = cache_root() / "models" / f"{gguf.stem}-{key.hexdigest()[:12]}"
    if not is_gguf_cache(folder):
        logger.info("converting %s to safetensors in %s (once; later loads are fast)", gguf, folder)
        _in_child_process("convert", gguf, folder)
    return folder


def cast_cache(folder: Path, dtype: str) -> Path:
    """The fp32 cache ``folder`` in ``dtype``, written beside it on first use."""
    target = folder.with_name(f"{folder.name}-{dtype}")
    if not is_gguf_cache(target):
        logger.info("writing a %s copy of %s (once)", dtype, folder)
        _in_child_process("cast", folder, target, dtype)
    return target


def is_gguf_cache(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def _in_child_process(command: str, *args: Path | str) -> None:
    argv = [sys.executable, "-m", "lmembed.model.gguf_cache", command, *map(str, args)]
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"writing the safetensors copy of {args[0]} failed (exit {done.returncode}):\n"
            f"{done.stderr[-4000:]}"
        )


def write_gguf_cache(gguf: Path, folder: Path) -> None:
    """Dequantise ``gguf`` into ``folder``: what ``AutoModel.from_pretrained(gguf_file=...)``
    loads, bit for bit (tensors, names, config), and the tokenizer.

    The same transformers routine dequantises the same tensors under the same names, but
    into a state dict that is saved as it is: ``from_pretrained`` would also build a model
    and copy every weight into it, holding them twice. The skeleton on the meta device only
    supplies the parameter names. The tokenizer is read last, after the weights are freed.
    """
    loaded = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.for_model(**_without_quantization(loaded.to_dict()))
    config.dtype = torch.float32  # what the tensors hold
    with torch.device("meta"):
        skeleton = AutoModel.from_config(config)
    with _dequantising_in_place():
        parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)
    with atomic_directory(folder) as tmp:
        save_file(parsed.pop("tensors"), str(tmp / "model.safetensors"))
        config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        atomic_write_json(tmp / SOURCE_FILE, {"gguf": str(gguf.resolve())})


DEQUANTISE_ROWS = 4096  # rows of a tensor dequantised at once (2.6 MB of gemma's embedding)


def dequantise_by_rows(data: np.ndarray, qtype: Any, rows: int = DEQUANTISE_ROWS) -> np.ndarray:
    """``gguf.dequantize(data, qtype)``, ``rows`` rows at a time into one array: gguf's own
    keeps every dequantised group of rows before it joins them, so a tensor twice."""
    if data.ndim < 2 or data.shape[0] <= rows:
        return _WHOLE_DEQUANTIZE(data, qtype)
    first = _WHOLE_DEQUANTIZE(data[:rows], qtype)
    out = np.empty((data.shape[0], *first.shape[1:]), dtype=first.dtype)
    out[:rows] = first
    for start in range(rows, data.shape[0], rows):
        out[start : start + rows] = _WHOLE_DEQUANTIZE(data[start : start + rows], qtype)
    return out


_WHOLE_DEQUANTIZE = gguf.dequantize


class _NumpyKeepingFreshArrays:
    """numpy for transformers' GGUF loader, whose ``np.copy`` of every dequantised array
    would hold the largest tensor twice: an array that owns its memory (fresh from
    dequantisation) is passed on as it is; views of the file are still copied."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def copy(array: Any, *args: Any, **kwargs: Any) -> Any:
        fresh = isinstance(array, np.ndarray) and array.flags.owndata and array.flags.writeable
        return array if fresh and not args and not kwargs else np.copy(array, *args, **kwargs)


@contextmanager
def _dequantising_in_place() -> Iterator[None]:
    """transformers' GGUF loader with ``dequantise_by_rows`` and no copies of fresh arrays:
    the same values, a peak lower by twice the embedding matrix (it reads
    ``gguf.dequantize`` and ``np`` when it runs; both are put back after)."""
    gguf.dequantize, gguf_loading.np = dequantise_by_rows, _NumpyKeepingFreshArrays()
    try:
        yield
    finally:
        gguf.dequantize, gguf_loading.np = _WHOLE_DEQUANTIZE, np


def write_cast_copy(folder: Path, target: Path, dtype: str) -> None:
    """``folder``'s model loaded in ``dtype`` (so modules transformers keeps in fp32 stay
    so) and saved to ``target`` with the rest of the folder."""
    model = AutoModel.from_pretrained(folder, dtype=DTYPES[dtype])
    with atomic_directory(target) as tmp:
        copy_all_but_weights(folder, tmp)
        save_model(model, str(tmp / "model.safetensors"))


def copy_all_but_weights(folder: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy ``folder``'s config, tokenizer and other files (not ``*.safetensors``, not
    ``skip``) into ``target``, for a copy of the model with other weights."""
    for file in folder.iterdir():
        if file.suffix != ".safetensors" and file.name not in skip:
            shutil.copy2(file, target / file.name)


def _without_quantization(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "quantization_config"}


def main(argv: list[str]) -> None:
    """``convert GGUF FOLDER`` or ``cast FOLDER TARGET DTYPE`` (run by ``_in_child_process``)."""
    command, source, target, *dtype = argv
    if command == "convert":
        write_gguf_cache(Path(source), Path(target))
    else:
        write_cast_copy(Path(source), Path(target), *dtype)


if __name__ == "__main__":
    main(sys.argv[1:])
