"""Safetensors copies of GGUF models, written once, each by a process of its own.

GGUF files load slowly (dequantisation, 15-60 s) and transformers refuses to
``save_pretrained`` them, so the first load writes a dequantised fp32 copy to
``cache_root()/models`` and later loads read that in seconds. The first bf16/fp16 load also
writes a copy in that dtype beside it, because safetensors are memory-mapped: a load in the
file's own dtype maps the weights, while a cast reads and rounds all of them again each
start (for gemma-3-270m, a 2.3 GB peak instead of 1 GB). Rounding once when the copy is
written is the same rounding as at every load.

Both copies are written by ``python -m lmembed.model.gguf_cache`` in a child process.
Dequantising gemma-3-270m passes through about 3 GB of temporaries (its 262k x 640
embedding matrix in fp32, more than once), and glibc keeps most of what is freed in the
process's heap: a process that converted in place would carry over 1 GB it no longer uses
into the training or serving that follows.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import torch
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
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)
    with atomic_directory(folder) as tmp:
        save_file(parsed.pop("tensors"), str(tmp / "model.safetensors"))
        config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        atomic_write_json(tmp / SOURCE_FILE, {"gguf": str(gguf.resolve())})


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
