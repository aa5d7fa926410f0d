"""``Embedder``: text -> prompt -> EOS -> tokens -> backbone -> pooled vector.

The same object serves training (``forward`` keeps the graph) and inference
(``encode``: length-sorted batches, inference mode, NumPy out), so the
embedding function can't drift between the two.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import BatchEncoding, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lmembed.io import atomic_write_json
from lmembed.model.loading import DTYPES, load_backbone, packaged_defaults
from lmembed.model.pooling import POOLING_METHODS, pool

SPEC_FILE = "lmembed.json"
# What one more forward pass costs, in tokens of compute, when planning chunks. On CPU
# compute is per token (gemma-3-270m training: ~2 ms a token, ~75 ms a pass, so a pass
# is worth ~40 tokens; 64 leans to fewer passes); accelerators pad almost for free but
# pay per launch, so there chunks are only re-cut, never added.
SPLIT_COST_TOKENS = {"cpu": 64.0}
ONLY_NEEDED_SPLITS = 1e12


@dataclass
class EmbeddingSpec:
    """Everything that defines the embedding function; saved with adapters and results."""

    model: str
    adapter: str | None = None
    prompt: str | None = None
    pooling: str = "last"
    max_length: int = 128
    dtype: str = "bf16"
    append_eos: bool = True
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.prompt is not None and "{s}" not in self.prompt:
            raise ValueError(f"prompt template must contain '{{s}}', got {self.prompt!r}")
        if self.pooling not in POOLING_METHODS:
            raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {self.pooling!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EmbeddingSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def save(self, folder: str | Path) -> None:
        atomic_write_json(Path(folder) / SPEC_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingSpec:
        path = Path(folder) / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not an lmembed adapter folder: no {SPEC_FILE}")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


class Embedder(torch.nn.Module):
    """A backbone plus the recipe that turns its hidden states into text embeddings."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: EmbeddingSpec
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_id = _eos_to_append(tokenizer) if spec.append_eos else None

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        adapter: str | Path | None = None,
        prompt: str | None = None,
        pooling: str | None = None,
        max_length: int | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
    ) -> Embedder:
        """Load a model, optionally with a trained adapter.

        With ``adapter``, every option left as ``None`` (the model too) is restored
        from the adapter's saved spec, so the training-time function comes back. A
        model folder with its own ``lmembed.json`` (``lmembed export --format merged``)
        restores its options the same way.
        """
        spec_folder = adapter if adapter is not None else _folder_with_spec(model)
        saved = EmbeddingSpec.load(spec_folder).to_dict() if spec_folder is not None else {}
        model = model or saved.get("model")
        if model is None:
            raise ValueError("give a model, or an adapter folder that records one")
        packaged = packaged_defaults(model)
        defaults = {
            "pooling": packaged.pooling if packaged else "last",
            "max_length": packaged.max_length if packaged else 128,
            "dtype": "bf16",
        }
        given = {"prompt": prompt, "pooling": pooling, "max_length": max_length, "dtype": dtype}
        options = {**defaults, **saved, **{k: v for k, v in given.items() if v is not None}}
        options.update(model=model, adapter=str(adapter) if adapter else None)
        options["trust_remote_code"] = trust_remote_code or saved.get("trust_remote_code", False)
        spec = EmbeddingSpec.from_dict(options)
        backbone, tokenizer = load_backbone(spec.model, spec.dtype, spec.trust_remote_code)
        if adapter is not None:
            from lmembed.model.lora import load_adapter

            backbone = load_adapter(backbone, adapter)
        embedder = cls(backbone, tokenizer, spec).eval()
        return embedder.to(device) if device is not None else embedder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def format(self, texts: list[str]) -> list[str]:
        template = self.spec.prompt
        return texts if template is None else [template.replace("{s}", t) for t in texts]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Prompt, tokenize with truncation, append EOS (kept when truncated); unpadded."""
        reserve = 1 if self.eos_id is not None else 0
        ids = self.tokenizer(
            self.format(texts),
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
        hidden = self.model(**batch).last_hidden_state
        return pool(hidden, batch["attention_mask"], self.spec.pooling)

    def chunks(self, ids: list[list[int]], size: int) -> list[list[int]]:
        """Positions of ``ids``, longest first, cut into chunks of at most ``size`` texts.

        The cuts minimise padded tokens plus a per-pass cost (``length_sorted_chunks``): on
        CPU a chunk is split wherever the padding saved outweighs one more forward pass.
        """
        split_cost = SPLIT_COST_TOKENS.get(self.device.type, ONLY_NEEDED_SPLITS)
        return length_sorted_chunks(ids, size, split_cost)

    def embed(
        self, texts: list[str], chunk_size: int | None = None, progress: bool = False
    ) -> torch.Tensor:
        """Embeddings of ``texts`` in input order, computed in length-sorted chunks.

        Sorting by token count before chunking means each chunk pads to a
        similar length, so little compute goes to padding. Grad mode is the
        caller's choice: training keeps the graph, ``encode`` runs in inference mode.
        """
        ids = self.tokenize(texts)
        chunks = self.chunks(ids, chunk_size or len(ids) or 1)
        bar = tqdm(chunks, desc="encode", unit="batch", disable=not progress, leave=False)
        parts = [self(self.collate([ids[i] for i in chunk])) for chunk in bar]
        order = torch.tensor([i for chunk in chunks for i in chunk], dtype=torch.long)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return torch.cat(parts).index_select(0, inverse.to(parts[0].device))

    @torch.inference_mode()
    def encode(
        self, texts: list[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        """Embed ``texts`` as float32 rows in input order (not normalised)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single string in a list")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        was_training = self.training
        self.eval()
        show = len(texts) > 8 * batch_size if show_progress is None else show_progress
        vectors = self.embed(list(texts), chunk_size=batch_size, progress=show)
        self.train(was_training)
        return vectors.float().cpu().numpy()

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size


def _folder_with_spec(model: str | None) -> Path | None:
    """``model`` when it is a local folder carrying ``lmembed.json`` (a merged export)."""
    return Path(model) if model and (Path(model) / SPEC_FILE).is_file() else None


def length_sorted_chunks(
    ids: list[list[int]], size: int, split_cost: float = ONLY_NEEDED_SPLITS
) -> list[list[int]]:
    """Positions of ``ids``, longest first, cut into chunks of at most ``size``.

    Chunks of similar length pad little. Each chunk costs its padded size (longest row x
    rows) plus ``split_cost`` tokens, and dynamic programming over the cut points finds
    the cheapest plan: NLI triplets (10-50 tokens) in equal chunks of 32 carry ~50%
    padding, a CPU plan (``split_cost`` 64) ~13% in a few more, smaller passes. The
    default keeps the fewest chunks, ``ceil(n / size)``, and only moves their cuts.
    GradCache replays exactly these chunks, so both passes come from ``Embedder.chunks``.
    """
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    longest = np.array([len(ids[i]) for i in order], dtype=np.float64)
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
