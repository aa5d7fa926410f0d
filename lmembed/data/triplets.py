"""NLI triplets (anchor, entailment, contradiction) held in memory: the classic input.

The layout is SimCSE's ``nli_for_simcse.csv``: columns ``sent0, sent1, hard_neg``. Reading,
validation and error messages are the training-data loader's (``lmembed.data.training``);
this module only fixes the columns and materialises the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmembed.data.formats import HUB_NLI, dataset_name
from lmembed.data.training import index_dataset

COLUMNS = ("sent0", "sent1", "hard_neg")
_MAPPING = dict(zip(("anchor", "positive", "negatives"), COLUMNS, strict=True))

__all__ = ["COLUMNS", "HUB_NLI", "Triplets", "load_triplets"]


@dataclass(frozen=True)
class Triplets:
    """Parallel lists: ``anchors[i]`` entails ``positives[i]`` and contradicts ``negatives[i]``."""

    anchors: list[str]
    positives: list[str]
    negatives: list[str]

    def __post_init__(self) -> None:
        if not len(self.anchors) == len(self.positives) == len(self.negatives):
            raise ValueError("anchors, positives and negatives must have the same length")

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, idx: int) -> tuple[str, str, str]:
        return self.anchors[idx], self.positives[idx], self.negatives[idx]


def load_triplets(source: str | Path, limit: int | None = None) -> Triplets:
    """Read triplets from ``.csv``, ``.tsv``, ``.jsonl`` (each maybe ``.gz``), ``.parquet``, a
    folder of them or a hub dataset id. ``limit`` keeps the first ``limit`` triplets (for
    smoke runs). Raises ``DataError``."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    dataset = index_dataset(str(source), dataset_name(source), 0, _MAPPING, limit, 1)
    examples = dataset.examples(range(len(dataset)))
    return Triplets(
        [e.anchor for e in examples],
        [e.positive for e in examples],
        [e.negatives[0] for e in examples],
    )
