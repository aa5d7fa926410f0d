"""mteb's own STS evaluator, on local tasks from the shared data, agrees with ``evaluate``."""

import mteb
import pytest
from tiny_models import SHARED_DATA

from lmembed import Embedder, evaluate
from lmembed.integrations.mteb import LocalSTSTask, MTEBEncoder


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
    result = evaluate(embedder, task_name, SHARED_DATA, batch_size=32, progress=False, cache=False)
    return result["tasks"][task_name]["spearman"]


@pytest.mark.parametrize("task_name", ["biosses", "sts17"])
def test_mteb_sts_matches_lmembed_eval(tiny_llama, task_name):
    embedder = Embedder.from_pretrained(str(tiny_llama), prompt="{s} is: ", dtype="fp32")
    ours = _lmembed_spearman(embedder, task_name)
    assert _mteb_spearman(embedder, task_name) == pytest.approx(ours, abs=1e-4)


def test_encoder_follows_the_protocol_and_ignores_prompt_types(tiny_llama):
    from mteb.models.models_protocols import EncoderProtocol
    from mteb.types import PromptType

    embedder = Embedder.from_pretrained(str(tiny_llama), dtype="fp32")
    encoder = MTEBEncoder(embedder, name="tiny")
    assert isinstance(encoder, EncoderProtocol)
    assert encoder.mteb_model_meta.name == "lmembed/tiny"
    task = LocalSTSTask("biosses", SHARED_DATA)
    batches = [{"text": ["a cat .", "two dogs"]}, {"text": ["the end"]}]
    common = dict(task_metadata=task.metadata, hf_split="test", hf_subset="default")
    query = encoder.encode(batches, prompt_type=PromptType.query, **common)
    document = encoder.encode(batches, prompt_type=PromptType.document, **common)
    assert (query == document).all() and query.shape == (3, embedder.dimension)
    assert (query == embedder.encode(["a cat .", "two dogs", "the end"])).all()


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_mteb_matches_lmembed_eval():
    embedder = Embedder.from_pretrained("smollm2-135m", prompt="{s} is: ", dtype="fp32")
    ours = _lmembed_spearman(embedder, "biosses")
    assert _mteb_spearman(embedder, "biosses") == pytest.approx(ours, abs=1e-4)
