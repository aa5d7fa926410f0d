"""ONNX export of the backbone and an ``Embedder`` whose forward pass runs in ONNX Runtime.

Only the transformer runs in the graph (``input_ids``, ``attention_mask`` ->
``last_hidden_state``). Prompt, EOS appending, truncation, padding side, length-sorted
batching and pooling stay ``Embedder``'s own code (``RuntimeEmbedder`` subclasses it and
swaps ``model`` for a session), so an exported model gives the vectors ``Embedder.encode``
gives, by construction rather than by a second implementation of the recipe.

Every export is checked before it is written: the graph runs on a batch of another size,
length and padding than the one it was traced with, and must match the torch backbone
(cosine >= ``AGREEMENT`` at every real token). Tracing bakes in whatever the model does in
Python with shapes; when that breaks the graph, the export fails with ``ExportError``
naming the architecture and the error instead of writing a model that embeds wrongly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.modeling_outputs import BaseModelOutput

from lmembed.backends.errors import ExportError, Quantize
from lmembed.model.embedder import Embedder
from lmembed.model.spec import EmbeddingSpec

logger = logging.getLogger("lmembed")

ONNX_FILE = "model.onnx"
OPSET = 17
AGREEMENT = 0.9999
# A usable int8 graph stays above this; per-batch int8 activations on a model with outlier
# activations (Gemma-3: token cosine ~0.1) fall far below it and are refused.
INT8_AGREEMENT = 0.9
INT8_BLOCK = 32  # int8-block: weights and activations share a scale per 32 inputs
INPUTS = ("input_ids", "attention_mask")
# Texts for tracing and for the check: different batch sizes and lengths, so padding shows.
TRACE_TEXTS = ["A man is playing a guitar.", "Two dogs run."]
PROBE_TEXTS = [
    "A woman is slicing an onion on a wooden board in the kitchen, slowly and carefully. " * 3,
    "Rain.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
]

RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]


class SessionBackbone(torch.nn.Module):
    """Stands in for the transformers backbone: a compiled graph behind ``run``."""

    def __init__(self, run: RunFn, config: PretrainedConfig) -> None:
        super().__init__()
        self.run = run
        self.config = config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BaseModelOutput:
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        return BaseModelOutput(last_hidden_state=torch.from_numpy(self.run(feed)))


class RuntimeEmbedder(Embedder):
    """``Embedder`` with the forward pass in a runtime graph (CPU, fp32 or int8 weights)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def merge_lora(self) -> Embedder:
        raise ExportError("an exported model has its LoRA merged already")

    def save_adapter(self, folder: str | Path) -> None:
        raise ExportError("an exported model has no adapter to save")


def runtime_embedder(folder: Path, spec: EmbeddingSpec, run: RunFn) -> RuntimeEmbedder:
    """A ``RuntimeEmbedder`` over an export folder's tokenizer and config."""
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
    return RuntimeEmbedder(SessionBackbone(run, config), tokenizer, spec).eval()


def onnxruntime_run(path: Path) -> RunFn:
    """An ONNX Runtime CPU session over ``path`` as a feed -> hidden states function."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    if names != set(INPUTS):
        raise ExportError(f"{path}: graph inputs {sorted(names)}, expected {list(INPUTS)}")
    return lambda feed: session.run(None, feed)[0]


def load_onnx(folder: Path, spec: EmbeddingSpec) -> RuntimeEmbedder:
    """The embedder of an ``export(kind="onnx")`` folder, on ONNX Runtime."""
    return runtime_embedder(folder, spec, onnxruntime_run(folder / ONNX_FILE))


class _HiddenStates(torch.nn.Module):
    """The backbone as a function of exactly the two graph inputs (no cache)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state


def export_onnx(embedder: Embedder, folder: Path, quantize: Quantize | None = None) -> float:
    """Write ``folder/model.onnx`` (fp32, or int8 weights) for an fp32 embedder.

    Returns the lowest per-token cosine of the written graph against torch on the probe
    batch. The fp32 graph must reach ``AGREEMENT`` or ``ExportError`` says why not.
    """
    path = folder / ONNX_FILE
    fp32 = folder / "model.fp32.onnx" if quantize else path
    _trace(embedder, fp32)
    agreement = check_graph(embedder, onnxruntime_run(fp32))
    if agreement < AGREEMENT:
        raise ExportError(
            f"{_architecture(embedder)} cannot be exported to ONNX: the traced graph gives "
            f"different hidden states on a new batch shape (lowest token cosine {agreement:.6f} "
            f"< {AGREEMENT}); its forward pass depends on shapes in Python code"
        )
    if quantize is None:
        return agreement
    QUANTIZERS[quantize](fp32, path)
    fp32.unlink()
    agreement = check_graph(embedder, onnxruntime_run(path))
    if agreement < INT8_AGREEMENT:
        hint = "try --quantize int8-block" if quantize == "int8" else "export without --quantize"
        raise ExportError(
            f"{_architecture(embedder)}: --quantize {quantize} breaks this model's vectors "
            f"(lowest token cosine against torch {agreement:.4f} < {INT8_AGREEMENT}; its "
            f"activations have outliers that coarse int8 scales cannot hold); {hint}"
        )
    return agreement


def _architecture(embedder: Embedder) -> str:
    config = embedder.model.config
    names = getattr(config, "architectures", None) or [type(embedder.model).__name__]
    return f"{embedder.spec.model} ({config.model_type}: {', '.join(names)})"


def _trace(embedder: Embedder, path: Path) -> None:
    """``torch.onnx.export`` (TorchScript tracing), batch and sequence axes dynamic."""
    batch = embedder.collate(embedder.tokenize(TRACE_TEXTS))
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")}
    module = _HiddenStates(embedder.model).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings: the check below is the judge
            torch.onnx.export(
                module,
                (batch["input_ids"], batch["attention_mask"]),
                str(path),
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as error:  # any tracer/exporter failure is an unsupported model
        raise ExportError(
            f"{_architecture(embedder)} cannot be exported to ONNX: {type(error).__name__}: {error}"
        ) from error


def check_graph(embedder: Embedder, run: RunFn) -> float:
    """Lowest cosine, over real tokens of the probe batch, of ``run`` against torch."""
    batch = embedder.collate(embedder.tokenize(PROBE_TEXTS))
    feed = {name: batch[name].numpy() for name in INPUTS}
    try:
        got = run(feed)
    except Exception as error:  # the graph fails on a shape it was not traced with
        raise ExportError(
            f"{_architecture(embedder)} cannot be exported to ONNX: the graph fails on a new "
            f"batch shape ({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from error
    with torch.no_grad():
        want = _HiddenStates(embedder.model).eval()(batch["input_ids"], batch["attention_mask"])
    real = feed["attention_mask"].astype(bool)
    return _min_cosine(got[real], want.float().numpy()[real])


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return -1.0
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return float(((a * b).sum(-1) / np.maximum(norms, 1e-12)).min())


def _quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic quantisation: int8 weights, activations quantised per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def _quantize_int8_block(source: Path, target: Path) -> None:
    """ONNX Runtime's MatMulNBits: symmetric int8 weights with one scale per ``INT8_BLOCK``
    inputs; ``accuracy_level=4`` quantises activations per block too (int8 kernels), so an
    outlier costs precision in its block only."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source)),
        bits=8,
        block_size=INT8_BLOCK,
        is_symmetric=True,
        accuracy_level=4,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


QUANTIZERS: dict[str, Callable[[Path, Path], None]] = {
    "int8": _quantize_int8,
    "int8-block": _quantize_int8_block,
}


def onnx_metadata(quantize: Quantize | None, agreement: float) -> dict[str, Any]:
    """What ``lmembed.json`` records about the graph (read back by ``load_encoder``)."""
    return {"opset": OPSET, "quantize": quantize, "agreement": agreement}
