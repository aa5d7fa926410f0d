"""Real packaged models: SmolLM2-135M learns a FlagEmbedding file and reloads.

The check is on a fixed held-in set, before and after: per-step losses of a short
run on a real model move by a few percent only and are noisy; the loss on the same
rows the run saw, measured in eval mode, falls far outside that noise.
"""

import json

import numpy as np
import pytest
import torch
from tiny_models import require_packaged_model, require_shared

from lmembed.data.training import DataOptions, load_training_data
from lmembed.data.triplets import load_triplets
from lmembed.losses import info_nce
from lmembed.model.embedder import Embedder
from lmembed.training.config import TrainConfig
from lmembed.training.run_dir import read_metrics
from lmembed.training.trainer import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 16


def _flagembedding_file(path, rows: int) -> list[dict]:
    """SNLI triplets as FlagEmbedding rows: the contradiction plus two other rows' positives."""
    nli = load_triplets(require_shared("nli/snli_devtest_triplets_tok.csv.gz"), limit=rows)
    records = []
    for i in range(rows):
        others = [nli.positives[(i + k) % rows] for k in (1, 2)]
        records.append({"query": nli.anchors[i], "pos": [nli.positives[i]],
                        "neg": [nli.negatives[i], *others]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def _held_in_loss(embedder: Embedder, records: list[dict]) -> float:
    """InfoNCE over all rows at once: queries against every positive and negative."""
    queries = embedder.encode([r["query"] for r in records], role="query", show_progress=False)
    positives = [r["pos"][0] for r in records]
    negatives = [n for r in records for n in r["neg"]]
    documents = embedder.encode(positives + negatives, role="document", show_progress=False)
    docs = torch.from_numpy(documents)
    loss = info_nce(torch.from_numpy(queries), docs[: len(records)], docs[len(records) :])
    return float(loss)


def test_smollm2_learns_a_flagembedding_file_and_reloads(tmp_path):
    """Issue 12's user (b): FlagEmbedding jsonl, 3 negatives per query, asymmetric prompts."""
    require_packaged_model("smollm2-135m")
    path = tmp_path / "mined.jsonl"
    records = _flagembedding_file(path, ROWS)
    data = load_training_data(DataOptions(data=[str(path)]))
    assert data.batch(0, 4, seed=42).negatives_per_anchor == 3

    output = tmp_path / "flag"
    config = TrainConfig.from_flat(
        model="smollm2-135m", data=str(path), output=str(output), steps=12, batch_size=4,
        lr=2e-3, warmup=1, max_length=32, save_every=6,
        query_prompt="Query: {s}", document_prompt="Passage: {s}",
    )  # fmt: skip
    base = Embedder.from_spec(config.embedding)
    before = _held_in_loss(base, records)
    del base
    result = train(config, data=data)
    losses = [r["loss"] for r in read_metrics(output / "log.jsonl")]
    assert len(losses) == 12 and np.isfinite(losses).all() and result.final_loss == losses[-1]

    embedder = Embedder.from_pretrained(adapter=output)
    assert embedder.spec.model == "smollm2-135m" and embedder.spec.query_prompt == "Query: {s}"
    assert embedder.tokenizer.pad_token_id == embedder.tokenizer.eos_token_id
    after = _held_in_loss(embedder, records)
    print(f"\nheld-in InfoNCE over {ROWS} rows x 64 candidates: {before:.3f} -> {after:.3f}")
    assert after < 0.9 * before, (before, after)

    query = embedder.encode(["A man is playing a guitar."], role="query")
    document = embedder.encode(["A man is playing a guitar."], role="document")
    assert query.shape == (1, 576) and not np.allclose(query, document)
