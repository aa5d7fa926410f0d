"""GradCache (Gao et al., 2021): full-batch contrastive gradients in one chunk's memory.

The loss couples every embedding of the batch, so plain backprop keeps the
graph of all texts at once. GradCache splits the work in three passes:

1. embed all texts in chunks of ``mini_batch_size`` without a graph, saving the
   RNG state before each chunk;
2. compute the loss on those cached embeddings (leaf tensors; in a multi-process
   run the loss gathers them across ranks) and backpropagate to get
   ``d loss / d embedding``;
3. re-embed each chunk with a graph, restoring its RNG state so dropout draws
   the same masks, and backpropagate the chunk's slice of that gradient.

The chunks are ``Embedder.chunks``, as in ``Embedder.embed``, so GradCache with
chunk size ``c`` reproduces a plain ``embed_ids(ids, chunk_size=c)`` pass, dropout
included, while holding the graph of only ``c`` texts. The price is a second
forward pass of the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmembed.model.embedder import Embedder


@dataclass(frozen=True)
class RngState:
    """The generators dropout draws from: the CPU one and the model device's."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self, device: torch.device) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)


def grad_cache_backward(
    embedder: Embedder,
    ids: list[list[int]],
    objective: Callable[[torch.Tensor], torch.Tensor],
    mini_batch_size: int,
) -> torch.Tensor:
    """Backpropagate ``objective(embed_ids(ids))`` into the model, ``mini_batch_size`` texts
    at a time; return the (detached) objective.

    ``ids`` are tokenized texts (``Embedder.tokenize``); ``objective`` maps their
    embeddings (rows in input order) to a scalar.
    """
    chunks = embedder.chunks(ids, mini_batch_size)
    device = embedder.device

    def forward(chunk: list[int]) -> torch.Tensor:
        return embedder.embed_chunk([ids[i] for i in chunk])

    states = []
    with torch.no_grad():
        parts = []
        for chunk in chunks:
            states.append(RngState.capture(device))
            parts.append(forward(chunk))
    stacked = torch.cat(parts)
    position = torch.tensor([i for chunk in chunks for i in chunk], device=device)
    cached = torch.empty_like(stacked).index_copy_(0, position, stacked).requires_grad_()
    loss = objective(cached)
    loss.backward()

    # The replay draws what pass 1 drew, so the RNG ends where pass 1 left it.
    for chunk, state in zip(chunks, states, strict=True):
        state.restore(device)
        rows = torch.tensor(chunk, device=device)
        forward(chunk).backward(cached.grad.index_select(0, rows))
    return loss.detach()
