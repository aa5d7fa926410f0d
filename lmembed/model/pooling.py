"""Pool per-token hidden states into one vector per text.

Both poolers read positions from the attention mask only: token ids can't tell
a pad from an EOS when ``pad_token_id == eos_token_id`` (SmolLM2, Qwen), and
left or right padding must give the same vector.
"""

from __future__ import annotations

import typing

import torch

from lmembed.model.spec import Pooling

POOLING_METHODS = typing.get_args(Pooling)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row, for left or right padding."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(dims=[1]).argmax(dim=1)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    if method == "last":
        return last_token_pool(hidden, attention_mask)
    if method == "mean":
        return mean_pool(hidden, attention_mask)
    raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {method!r}")
