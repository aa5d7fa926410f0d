"""mteb's own STS and retrieval evaluators, on local tasks, agree with lmembed's."""

import sys
from pathlib import Path

import mteb
import pytest
from tiny_models import SHARED_DATA

from lmembed import Embedder, evaluate
from lmembed.evaluation.retrieval import evaluate_retrieval
from lmembed.integrations.mteb import LocalRetrievalTask, LocalSTSTask, MTEBEncoder

sys.path.insert(0, str(Path(__file__).parents[1] / "retrieval"))
from retrieval_toy import write_beir  # noqa: E402


def _mteb_spearman(embedder: Embedder, task_name: str) -> float:
    """mteb.evaluate (no result cache, nothing downloaded); Spearman x100 of cosine."""
    result = mteb.evaluate(
        MTEBEncoder(embedder),
        LocalSTSTask(task_name, SHARED_DATA),
        cache=None,
        encode_kwargs={"batch_size": 16},
        show_progress_bar=False,
    )
    scores = result.task_results[0].scores["test"][0]
    assert scores["main_score"] == scores["cosine_spearman"]
    return scores["cosine_spearman"] * 100


def _lmembed_spearman(embedder: Embedder, task_name: str) -> float:
    result = evaluate(
        embedder, task_name, SHARED_DATA, batch_size=32, progress=False, cache=False
    ).to_dict()
    return result["tasks"][task_name]["spearman"]


@pytest.mark.parametrize("task_name", ["biosses", "sts17"])
def test_mteb_sts_matches_lmembed_eval(tiny_llama, task_name):
    embedder = Embedder.from_pretrained(str(tiny_llama), prompt="{s} is: ", dtype="fp32")
    ours = _lmembed_spearman(embedder, task_name)
    assert _mteb_spearman(embedder, task_name) == pytest.approx(ours, abs=1e-4)


def test_encoder_follows_the_protocol_and_maps_prompt_types_to_roles(tiny_llama):
    from mteb.models.models_protocols import EncoderProtocol
    from mteb.types import PromptType

    embedder = Embedder.from_pretrained(str(tiny_llama), dtype="fp32")
    encoder = MTEBEncoder(embedder, name="tiny")
    assert isinstance(encoder, EncoderProtocol)
    assert encoder.mteb_model_meta.name == "lmembed/tiny"
    task = LocalSTSTask("biosses", SHARED_DATA)
    texts = ["a cat .", "two dogs", "the end"]
    batches = [{"text": texts[:2]}, {"text": texts[2:]}]
    common = dict(task_metadata=task.metadata, hf_split="test", hf_subset="default")
    query = encoder.encode(batches, prompt_type=PromptType.query, **common)
    document = encoder.encode(batches, prompt_type=PromptType.document, **common)
    # A symmetric spec embeds both roles alike...
    assert (query == document).all() and query.shape == (3, embedder.dimension)
    assert (query == embedder.encode(texts)).all()
    # ...an asymmetric one gives each role its prompt.
    asymmetric = Embedder.from_pretrained(str(tiny_llama), dtype="fp32", query_prompt="q: {s}")
    encoder = MTEBEncoder(asymmetric)
    query = encoder.encode(batches, prompt_type=PromptType.query, **common)
    document = encoder.encode(batches, prompt_type=PromptType.document, **common)
    assert (query == asymmetric.encode(texts, role="query")).all()
    assert (document == asymmetric.encode(texts, role="document")).all()
    assert not (query == document).all()


MTEB_RETRIEVAL = {
    "ndcg@10": "ndcg_at_10",
    "mrr@10": "mrr_at_10",
    "map@100": "map_at_100",
    "recall@10": "recall_at_10",
    "recall@100": "recall_at_100",
    "accuracy@1": "hit_rate_at_1",
}


def test_mteb_retrieval_matches_lmembed(tiny_llama, tmp_path):
    """mteb's search and pytrec_eval-based scoring on a local BEIR folder (rounded to 1e-5)."""
    folder = write_beir(tmp_path / "toy")
    embedder = Embedder.from_pretrained(str(tiny_llama), dtype="fp32", query_prompt="query: {s}")
    result = mteb.evaluate(
        MTEBEncoder(embedder), LocalRetrievalTask(folder), cache=None, show_progress_bar=False
    )
    theirs = result.task_results[0].scores["test"][0]
    ours = evaluate_retrieval(embedder, folder, cache=False, progress=False).tasks["toy"]
    assert theirs["main_score"] == theirs["ndcg_at_10"]
    for metric, name in MTEB_RETRIEVAL.items():
        assert ours.metrics[metric] == pytest.approx(100 * theirs[name], abs=1e-3), metric


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_mteb_matches_lmembed_eval():
    embedder = Embedder.from_pretrained("smollm2-135m", prompt="{s} is: ", dtype="fp32")
    ours = _lmembed_spearman(embedder, "biosses")
    assert _mteb_spearman(embedder, "biosses") == pytest.approx(ours, abs=1e-4)
