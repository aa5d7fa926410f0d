"""``Embedder``: text -> prompt -> EOS -> tokens -> backbone -> pooled vector.

The same object serves training (``forward`` keeps the graph) and inference
(``encode``: length-sorted batches, inference mode, NumPy out), so the
embedding function can't drift between the two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import BatchEncoding, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lmembed.model.loading import load_backbone
from lmembed.model.lora import load_adapter, merge_lora, save_adapter
from lmembed.model.pooling import pool
from lmembed.model.resolve import resolve_spec
from lmembed.model.spec import EmbeddingSpec, Role

# What one more forward pass costs, in tokens of compute, when planning chunks. On CPU
# compute is per token (gemma-3-270m training: ~2 ms a token, ~75 ms a pass, so a pass
# is worth ~40 tokens; 64 leans to fewer passes); accelerators pad almost for free but
# pay per launch, so there chunks are only re-cut, never added.
SPLIT_COST_TOKENS = {"cpu": 64.0}


class Embedder(torch.nn.Module):
    """A backbone plus the recipe that turns its hidden states into text embeddings."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: EmbeddingSpec
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        # An embedder never decodes: without this, decoders build a KV cache in every forward
        # pass, which also breaks torch.compile's graphs (recompiling at each layer's cache).
        model.config.use_cache = False
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_id = _eos_to_append(tokenizer) if spec.append_eos else None

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        adapter: str | Path | None = None,
        device: str | torch.device | None = None,
        merge: bool = True,
        **options: object,
    ) -> Embedder:
        """Load a model, optionally with a trained adapter (options: ``EmbeddingSpec`` fields).

        Options left out (or ``None``) come from the adapter's saved spec (or a merged
        export's), so the training-time function comes back; see ``resolve_spec``.
        ``merge``: see ``from_spec``.
        """
        spec = resolve_spec(options, model=model, adapter=adapter)
        return cls.from_spec(spec, device, merge)

    @classmethod
    def from_spec(
        cls, spec: EmbeddingSpec, device: str | torch.device | None = None, merge: bool = True
    ) -> Embedder:
        """Build the embedding function a spec describes (backbone, then its adapter).

        ``merge`` folds an adapter into fp32 base weights: the same vectors (to float
        rounding) without LoRA's extra matmuls at every linear layer. In bf16/fp16 the
        adapter stays separate, as it was trained: rounding W + BA to the base's 8 (bf16) or
        11 (fp16) mantissa bits would lose every part of the update below half a unit in
        the last place of W. ``merge=False`` keeps the peft model (to save the adapter
        again or train it further).
        """
        backbone, tokenizer = load_backbone(spec.model, spec.dtype, spec.trust_remote_code)
        if spec.adapter is not None:
            backbone = load_adapter(backbone, spec.adapter)
        embedder = cls(backbone, tokenizer, spec).eval()
        if merge and backbone.dtype == torch.float32:
            embedder.merge_lora()
        return embedder.to(device) if device is not None else embedder

    def save_adapter(self, folder: str | Path) -> None:
        """Write the trained LoRA and this spec, so ``from_pretrained(adapter=folder)`` works."""
        if not isinstance(self.model, PeftModel):
            raise ValueError(
                "this embedder has no separate LoRA to save (none loaded, or merged into the "
                "base weights: load it with merge=False to save or train the adapter)"
            )
        save_adapter(self.model, self.spec, folder)

    def merge_lora(self) -> Embedder:
        """Fold LoRA into the base weights in place (plain transformers model)."""
        self.model = merge_lora(self.model)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def apply_prompt(self, texts: list[str], role: Role | None = None) -> list[str]:
        """Texts inside the prompt template of ``role`` (query, document or symmetric)."""
        template = self.spec.template(role)
        return texts if template is None else [template.replace("{s}", t) for t in texts]

    def tokenize(self, texts: list[str], role: Role | None = None) -> list[list[int]]:
        """Prompt, tokenize with truncation, append EOS (kept when truncated); unpadded."""
        reserve = 1 if self.eos_id is not None else 0
        ids = self.tokenizer(
            self.apply_prompt(texts, role),
            truncation=True,
            max_length=self.spec.max_length - reserve,
            padding=False,
            return_attention_mask=False,
        )["input_ids"]
        return ids if self.eos_id is None else [row + [self.eos_id] for row in ids]

    def collate(self, ids: list[list[int]]) -> BatchEncoding:
        """Pad to the longest row (dynamic padding) on the tokenizer's padding side."""
        return self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")

    def forward(self, batch: BatchEncoding | dict) -> torch.Tensor:
        """Pooled embeddings for a padded batch (keeps the autograd graph)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        mask = batch["attention_mask"]
        if self.spec.attention == "bidirectional":
            batch["attention_mask"] = bidirectional_mask(mask, self.model.dtype)
        hidden = self.model(**batch).last_hidden_state
        return pool(hidden, mask, self.spec.pooling)

    def embed_chunk(self, ids: list[list[int]]) -> torch.Tensor:
        """Embeddings of one pass's tokenized texts: the one place encoding, training and
        GradCache run the model (bench/packing.py swaps it for packed rows)."""
        return self(self.collate(ids))

    def chunks(self, ids: list[list[int]], size: int) -> list[list[int]]:
        """Positions of ``ids``, longest first, cut into chunks of at most ``size`` texts.

        The cuts minimise padded tokens plus a per-pass cost (``length_sorted_chunks``): on
        CPU a chunk is split wherever the padding saved outweighs one more forward pass.
        """
        return length_sorted_chunks(ids, size, SPLIT_COST_TOKENS.get(self.device.type))

    def embed(
        self,
        texts: list[str],
        chunk_size: int | None = None,
        progress: bool = False,
        role: Role | None = None,
    ) -> torch.Tensor:
        """Embeddings of ``texts`` (prompted for ``role``) in input order."""
        return self.embed_ids(self.tokenize(texts, role), chunk_size, progress)

    def embed_ids(
        self, ids: list[list[int]], chunk_size: int | None = None, progress: bool = False
    ) -> torch.Tensor:
        """Embeddings of tokenized texts in input order, computed in length-sorted chunks.

        Sorting by token count before chunking means each chunk pads to a
        similar length, so little compute goes to padding. Grad mode is the
        caller's choice: training keeps the graph, ``encode`` runs in inference mode.
        """
        chunks = self.chunks(ids, chunk_size or len(ids) or 1)
        bar = tqdm(chunks, desc="encode", unit="batch", disable=not progress, leave=False)
        parts = [self.embed_chunk([ids[i] for i in chunk]) for chunk in bar]
        order = torch.tensor([i for chunk in chunks for i in chunk], dtype=torch.long)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return torch.cat(parts).index_select(0, inverse.to(parts[0].device))

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        batch_size: int = 32,
        show_progress: bool | None = None,
        role: Role | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` as float32 rows in input order (not normalised).

        ``role`` picks the prompt: ``"query"`` or ``"document"`` for asymmetric
        retrieval (``query_prompt``/``document_prompt``), ``None`` for ``prompt``.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single string in a list")
        ids = self.tokenize(list(texts), role) if texts else []
        return self.encode_ids(ids, batch_size, show_progress)

    @torch.inference_mode()
    def encode_ids(
        self, ids: list[list[int]], batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        """``encode`` for texts already through ``tokenize`` (callers that also count tokens)."""
        if not ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        was_training = self.training
        self.eval()
        show = len(ids) > 8 * batch_size if show_progress is None else show_progress
        try:
            vectors = self.embed_ids(ids, chunk_size=batch_size, progress=show)
        finally:
            self.train(was_training)
        return vectors.float().cpu().numpy()

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size


def length_sorted_chunks(
    ids: list[list[int]], size: int, split_cost: float | None = None
) -> list[list[int]]:
    """Positions of ``ids``, longest first, cut into chunks of at most ``size``.

    Chunks of similar length pad little. Each chunk costs its padded size (longest row x
    rows) plus ``split_cost`` tokens, and dynamic programming over the cut points finds
    the cheapest plan: NLI triplets (10-50 tokens) in equal chunks of 32 carry ~50%
    padding, a CPU plan (``split_cost`` 64) ~13% in a few more, smaller passes. The
    default (``None``) keeps the fewest chunks, ``ceil(n / size)``, and only moves their
    cuts: a pass then costs more than all the padding it could save. GradCache replays
    exactly these chunks, so both passes come from ``Embedder.chunks``.
    """
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    longest = np.array([len(ids[i]) for i in order], dtype=np.float64)
    if split_cost is None:
        split_cost = float(longest.max() * len(longest) + 1) if len(longest) else 1.0
    best = np.zeros(len(order) + 1)
    cut = np.zeros(len(order) + 1, dtype=np.int64)
    for end in range(1, len(order) + 1):
        starts = np.arange(max(0, end - size), end)
        costs = best[starts] + longest[starts] * (end - starts) + split_cost
        pick = int(np.argmin(costs))
        best[end], cut[end] = costs[pick], starts[pick]
    bounds, end = [], len(order)
    while end > 0:
        bounds.append((int(cut[end]), end))
        end = int(cut[end])
    return [order[start:stop] for start, stop in reversed(bounds)]


def _eos_to_append(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """EOS id to append, or None when the tokenizer adds it already or has none.

    Encoders (BERT: [SEP]) have no EOS token; some decoder tokenizers already end
    every input with EOS. Transformers 5 ignores ``add_eos_token`` in configs, so
    we probe the tokenizer's real behaviour instead of trusting flags.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        return None
    probe = tokenizer("a")["input_ids"]
    return None if probe and probe[-1] == eos else eos


def bidirectional_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4D mask (batch, 1, query, key) of bidirectional attention: every position
    sees every real token, never a pad. transformers passes a 4D mask to the attention as it
    is, for every architecture, so this one switch works for all of them (Gemma-3's sliding
    layers then see the whole text too, the same thing below its 512-token window)."""
    length = attention_mask.shape[1]
    return additive_mask(
        attention_mask[:, None, None, :].bool().expand(-1, 1, length, length), dtype
    )


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive form of a boolean attention mask: 0 where allowed, the lowest ``dtype``
    value elsewhere (what transformers adds to the attention scores)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )
