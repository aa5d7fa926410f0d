"""Real packaged models: SmolLM2-135M trains on the shared NLI triplets and reloads."""

import numpy as np
import pytest
from tiny_models import require_packaged_model, require_shared

from lmembed.model.embedder import Embedder
from lmembed.training.config import TrainConfig
from lmembed.training.run_dir import read_metrics
from lmembed.training.trainer import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_smollm2_twenty_steps_loss_falls_and_adapter_reloads(tmp_path):
    nli = require_shared("nli/snli_devtest_triplets_tok.csv.gz")
    require_packaged_model("smollm2-135m")
    output = tmp_path / "smollm2"
    config = TrainConfig.from_flat(
        model="smollm2-135m",
        data=str(nli),
        output=str(output),
        steps=20,
        batch_size=16,
        lr=2e-3,
        warmup=2,
        max_length=64,
        save_every=10,
    )
    result = train(config)
    losses = [r["loss"] for r in read_metrics(output / "log.jsonl")]
    assert len(losses) == 20
    # SmolLM2 starts highly anisotropic (cos ~0.98 between any two texts), so 20
    # steps move the loss less than for Gemma; a 5% drop is far outside step noise.
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5]), losses
    assert result.final_loss == losses[-1]

    embedder = Embedder.from_pretrained(adapter=output)
    assert embedder.spec.model == "smollm2-135m"
    assert embedder.tokenizer.pad_token_id == embedder.tokenizer.eos_token_id
    vectors = embedder.encode(
        ["A man is playing a guitar.", "Someone plays music.", "The stock market fell today."]
    )
    assert vectors.shape == (3, 576) and np.isfinite(vectors).all()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]


def test_smollm2_trains_from_flagembedding_jsonl_with_three_negatives(tmp_path):
    """Issue 12's user (b): a FlagEmbedding file, 3 negatives per query, asymmetric prompts."""
    import json

    from lmembed.data.training import DataOptions, load_training_data
    from lmembed.data.triplets import load_triplets

    nli = load_triplets(require_shared("nli/snli_devtest_triplets_tok.csv.gz"), limit=400)
    require_packaged_model("smollm2-135m")
    rng = np.random.default_rng(0)
    path = tmp_path / "mined.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(len(nli)):
            others = [nli.positives[j] for j in rng.choice(len(nli), 2) if j != i][:2]
            while len(others) < 2:
                others.append(nli.negatives[(i + len(others) + 1) % len(nli)])
            row = {"query": nli.anchors[i], "pos": [nli.positives[i]],
                   "neg": [nli.negatives[i], *others]}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    data = load_training_data(DataOptions(data=[str(path)]))
    assert data.batch(0, 8, seed=42).negatives_per_anchor == 3

    output = tmp_path / "flag"
    config = TrainConfig.from_flat(
        model="smollm2-135m", data=str(path), output=str(output), steps=20, batch_size=16,
        lr=2e-3, warmup=2, max_length=48, save_every=0,
        query_prompt="Query: {s}", document_prompt="Passage: {s}",
    )  # fmt: skip
    train(config, data=data)
    losses = [r["loss"] for r in read_metrics(output / "log.jsonl")]
    # 1 positive + 3 negatives per anchor: each anchor has 4 x 16 - 1 = 63 wrong candidates,
    # so the untrained loss is about log(64) = 4.16; as in the triplet test above, SmolLM2's
    # anisotropy makes 20 steps move it a few percent, far outside step noise.
    assert len(losses) == 20 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.97 * np.mean(losses[:5]), losses
    embedder = Embedder.from_pretrained(adapter=output)
    assert embedder.spec.query_prompt == "Query: {s}"
    query = embedder.encode(["A man is playing a guitar."], role="query")
    document = embedder.encode(["A man is playing a guitar."], role="document")
    assert not np.allclose(query, document)
