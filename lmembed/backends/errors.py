"""What every export format shares: its error, the quantisation modes, and the causal-mask rule."""

from __future__ import annotations

import typing
from typing import Literal

from lmembed.model.spec import EmbeddingSpec

# int8: ONNX Runtime dynamic quantisation (int8 weights per channel, activations per tensor
# and batch: breaks models with outlier activations); int8-block: int8 weights in
# blocks of 32 (MatMulNBits), activations quantised per block of 32 at run time.
RuntimeQuantize = Literal["int8", "int8-block"]
# --format gguf's weight types, as llama.cpp names them: f16, or q8_0 (int8 in blocks of 32,
# one f16 scale each); norms and biases stay f32 either way.
GGUFQuantize = Literal["f16", "q8_0"]
Quantize = Literal[RuntimeQuantize, GGUFQuantize]
QUANTIZE: tuple[str, ...] = typing.get_args(Quantize)
QUANTIZE_FORMATS: dict[tuple[str, ...], tuple[str, ...]] = {
    typing.get_args(RuntimeQuantize): ("onnx", "openvino"),
    typing.get_args(GGUFQuantize): ("gguf",),
}


class ExportError(ValueError):
    """The model cannot be represented in the requested format."""


def check_causal(spec: EmbeddingSpec, kind: str) -> None:
    """Graph and sentence-transformers formats run the backbone with its own causal mask."""
    if spec.attention != "causal":
        raise ExportError(
            f"--format {kind} runs the backbone with its own causal mask, so it cannot "
            f"reproduce --attention {spec.attention}; export with --format merged or adapter"
        )


def check_quantize(kind: str, quantize: str | None) -> None:
    """Each ``--quantize`` value belongs to the formats that can store it."""
    if quantize is None:
        return
    for names, formats in QUANTIZE_FORMATS.items():
        if quantize in names:
            if kind not in formats:
                raise ExportError(
                    f"--quantize {'|'.join(names)} applies to --format {' or '.join(formats)}, "
                    f"got {quantize!r} with --format {kind}"
                )
            return
    raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
