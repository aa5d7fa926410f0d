"""What every export format shares: its error, the int8 modes, and the causal-mask rule."""

from __future__ import annotations

import typing
from typing import Literal

from lmembed.model.spec import EmbeddingSpec

# int8: ONNX Runtime dynamic quantisation (int8 weights per channel, activations per tensor
# and batch: breaks models with outlier activations); int8-block: int8 weights in
# blocks of 32 (MatMulNBits), activations quantised per block of 32 at run time.
Quantize = Literal["int8", "int8-block"]
QUANTIZE: tuple[str, ...] = typing.get_args(Quantize)


class ExportError(ValueError):
    """The model cannot be represented in the requested format."""


def check_causal(spec: EmbeddingSpec, kind: str) -> None:
    """Graph and sentence-transformers formats run the backbone with its own causal mask."""
    if spec.attention != "causal":
        raise ExportError(
            f"--format {kind} runs the backbone with its own causal mask, so it cannot "
            f"reproduce --attention {spec.attention}; export with --format merged or adapter"
        )
