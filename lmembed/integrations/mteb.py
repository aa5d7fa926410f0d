"""Run an lmembed ``Embedder`` through mteb 2.x, and mteb's evaluators on local files.

``MTEBEncoder`` implements mteb's ``EncoderProtocol`` as mteb 2.26 defines it:
``encode(inputs: DataLoader[BatchedInput], *, task_metadata, hf_split, hf_subset,
prompt_type=None, **kwargs) -> Array``. mteb's prompt type picks the embedding's role:
queries get the spec's ``query_prompt``, documents its ``document_prompt`` (both fall
back to ``prompt``, so a symmetric model embeds both alike). mteb's task instructions
are ignored: they would change the function the model was trained for.

``LocalSTSTask`` is an mteb STS task over one of lmembed's STS files
(``lmembed.data.load_sts``), and ``LocalRetrievalTask`` an mteb retrieval task over a
BEIR-layout folder (``lmembed.data.retrieval.load_retrieval``), so mteb's own
evaluators run without the hub. Real mteb tasks (``mteb.get_tasks(["SciFact"])``) run
through the same encoder for users with a hub.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction
from mteb.types import PromptType

from lmembed.data.retrieval import load_retrieval
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
        """Embed every text of the dataloader in order (mteb batches are re-sorted by length),
        with the prompt of the role mteb names (query, document, or none)."""
        texts = [text for batch in inputs for text in batch["text"]]
        batch_size = kwargs.get("batch_size") or self.batch_size
        show = bool(kwargs.get("show_progress_bar", False))
        role = _ROLES.get(PromptType(prompt_type)) if prompt_type is not None else None
        return self.model.encode(texts, batch_size=batch_size, show_progress=show, role=role)


_ROLES = {PromptType.query: "query", PromptType.document: "document"}


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


class LocalRetrievalTask(AbsTaskRetrieval):
    """An mteb retrieval task (split ``test`` by default) from a BEIR folder or a task name."""

    def __init__(
        self,
        task: str | Path,
        data_dir: str | Path | None = None,
        split: str = "test",
        **kwargs: Any,
    ) -> None:
        loaded = load_retrieval(task, data_dir, split)
        self.metadata = TaskMetadata(
            name=f"lmembed-{loaded.name}",
            dataset={"path": str(loaded.path), "revision": loaded.corpus_sha256[:12]},
            description=f"lmembed retrieval task {loaded.name!r} read from {loaded.path}",
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=[split],
            eval_langs=["eng-Latn"],
            main_score="ndcg_at_10",
        )
        super().__init__(**kwargs)
        # Documents are already "title text", the composition mteb itself would apply.
        corpus = {
            "id": loaded.doc_ids,
            "title": [""] * len(loaded.doc_ids),
            "text": loaded.documents,
        }
        queries = {"id": loaded.query_ids, "text": loaded.queries}
        split_data = {
            "corpus": Dataset.from_dict(corpus),
            "queries": Dataset.from_dict(queries),
            "relevant_docs": loaded.qrels,
            "top_ranked": None,
        }
        self.dataset = {"default": {split: split_data}}
        self.data_loaded = True
