"""Run an lmembed ``Embedder`` through mteb 2.x, and mteb's evaluators on local STS files.

``MTEBEncoder`` implements mteb's ``EncoderProtocol`` as mteb 2.26 defines it:
``encode(inputs: DataLoader[BatchedInput], *, task_metadata, hf_split, hf_subset,
prompt_type=None, **kwargs) -> Array``. lmembed's embedding is symmetric: the
adapter's prompt template is applied to every text, so mteb's prompt types and
task instructions are ignored (they would change the function the model was
trained for).

``LocalSTSTask`` is an mteb STS task over one of lmembed's STS files
(``lmembed.data.load_sts``), so mteb's own evaluator runs without the hub.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction

from lmembed.data.sts import load_sts
from lmembed.model.embedder import Embedder


class MTEBEncoder(AbsEncoder):
    """An ``Embedder`` as an mteb encoder; ``mteb.evaluate(MTEBEncoder(e), tasks)``."""

    def __init__(self, embedder: Embedder, name: str | None = None, batch_size: int = 32) -> None:
        self.model = embedder
        self.batch_size = batch_size
        spec = embedder.spec
        label = name or Path(spec.adapter or spec.model).name
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": label if "/" in label else f"lmembed/{label}",
                "revision": _spec_revision(embedder),
                "embed_dim": embedder.dimension,
                "max_tokens": spec.max_length,
                "similarity_fn_name": ScoringFunction.COSINE,
                "framework": ["PyTorch"],
                "modalities": ["text"],
            }
        )

    def encode(
        self,
        inputs,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type=None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every text of the dataloader in order (mteb batches are re-sorted by length)."""
        texts = [text for batch in inputs for text in batch["text"]]
        batch_size = kwargs.get("batch_size") or self.batch_size
        show = bool(kwargs.get("show_progress_bar", False))
        return self.model.encode(texts, batch_size=batch_size, show_progress=show)


def _spec_revision(embedder: Embedder) -> str:
    """mteb keys cached results by revision: a hash of the embedding spec."""
    text = repr(sorted(embedder.spec.to_dict().items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class LocalSTSTask(AbsTaskSTS):
    """An mteb STS task (split ``test``) built from ``load_sts(name, data_dir)``."""

    def __init__(self, name: str, data_dir: str | Path | None = None, **kwargs: Any) -> None:
        task = load_sts(name, data_dir)
        self.metadata = TaskMetadata(
            name=f"lmembed-{name}",
            dataset={
                "path": str(task.path),
                "revision": hashlib.sha256(task.path.read_bytes()).hexdigest()[:12],
            },
            description=f"lmembed STS task {name!r} read from {task.path}",
            type="STS",
            category="t2t",
            modalities=["text"],
            eval_splits=["test"],
            eval_langs=["eng-Latn"],
            main_score="cosine_spearman",
        )
        super().__init__(**kwargs)
        # Correlations ignore mteb's linear score normalisation, so any range works.
        self.min_score, self.max_score = float(task.scores.min()), float(task.scores.max())
        rows = {"sentence1": task.sentences1, "sentence2": task.sentences2, "score": task.scores}
        self.dataset = {"default": DatasetDict({"test": Dataset.from_dict(rows)})}
        self.data_loaded = True
