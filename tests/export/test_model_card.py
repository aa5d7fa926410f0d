"""Model cards: every export format and a training run get a README.md the hub can parse,
holding the run's and ``lmembed eval --output`` files' scores and no local path."""

import json
import re

import pytest
from huggingface_hub import ModelCard
from tiny_models import random_lora_adapter

from lmembed.cli import main
from lmembed.evaluation import EvalRun
from lmembed.evaluation.retrieval import RetrievalResult, TaskRetrieval
from lmembed.evaluation.sts import STSResult, TaskScore
from lmembed.export import FORMATS, export
from lmembed.model.loading import PACKAGED_MODELS
from lmembed.model.spec import EmbeddingSpec
from lmembed.model_card import PUBLIC_MODELS, build_card, public_base_model, write_card
from lmembed.retrieval.metrics import METRICS

LIBRARY = {
    "sentence-transformers": "sentence-transformers",
    "merged": "transformers",
    "adapter": "peft",
    "onnx": "onnx",
    "openvino": "openvino",
    "gguf": "gguf",
}
HUB_DATA = "princeton-nlp/datasets-for-simcse"
# stsb-dev peaks at step 50 (kept by --keep-best), the last evaluation is step 100.
EVALUATIONS = [
    {"step": step, "metrics": {"stsb-dev": sts, "stsb-dev/pearson": sts - 1,
                               "stsb-paraphrase": ndcg, "stsb-paraphrase/mrr@10": ndcg - 2},
     "seconds": 1.5}
    for step, sts, ndcg in ((0, 12.5, 35.75), (50, 84.125, 90.5), (100, 83.5, 91.25))
]  # fmt: skip
BEST = {"metric": "stsb-dev", "step": 50, "score": 84.125}


def _write_json(path, value):
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def _load(folder) -> ModelCard:
    return ModelCard.load(folder / "README.md")


def _scores(card: ModelCard) -> dict[tuple[str, str], float]:
    return {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}


@pytest.fixture(scope="module")
def base_temp(tmp_path_factory):
    """Every local path a card could leak starts here."""
    return str(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama):
    """A training run folder as ``lmembed train`` leaves it (adapter and records)."""
    folder = tmp_path_factory.mktemp("runs") / "tiny-run"
    random_lora_adapter(folder, tiny_llama)
    local_data = tmp_path_factory.mktemp("data") / "snli.csv.gz"
    config = {"model": str(tiny_llama), "data": [str(local_data), HUB_DATA], "steps": 100,
              "batch_size": 8, "lr": 5e-4, "loss": "infonce", "temperature": 0.05,
              "lora_r": 8, "lora_targets": ["all-linear"], "prompt": "{s} is: ",
              "output": str(folder)}  # fmt: skip
    _write_json(folder / "train_config.json", config)
    datasets = [
        {"name": "snli", "source": str(local_data), "examples": 5864,
         "layout": "SimCSE triplets: anchor=sent0, positive=sent1, negatives=hard_neg",
         "negatives_per_anchor": 1},
        {"name": "simcse", "source": HUB_DATA, "examples": 1000, "negatives_per_anchor": 1},
    ]  # fmt: skip
    summary = {"examples": 6864, "mixing": "proportional", "dedupe": True, "datasets": datasets}
    _write_json(folder / "data.json", summary)
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVALUATIONS))
    _write_json(folder / "best.json", BEST)
    return folder


@pytest.fixture(scope="module")
def results_file(tmp_path_factory):
    """An ``lmembed eval --output --compare-base`` file with STS and retrieval tasks."""
    spec = {"model": "tiny", "adapter": "tiny-run"}
    retrieval = {name: 50.0 + i for i, name in enumerate(METRICS)}

    def sts(score: float) -> STSResult:
        return STSResult(spec, {"stsb": TaskScore(score, score - 0.5, 1379)})

    def ranking(shift: float) -> RetrievalResult:
        metrics = {name: value + shift for name, value in retrieval.items()}
        return RetrievalResult(spec, {"stsb-paraphrase-mini": TaskRetrieval(metrics, 309, 1500)})

    run = EvalRun(sts(81.25), ranking(0.0)).against(EvalRun(sts(12.0), ranking(-20.0)))
    return run.save(tmp_path_factory.mktemp("results") / "scores.json")


def test_sentence_transformers_card_holds_the_best_step_and_results_scores(
    tmp_path, run, results_file, base_temp
):
    out = export(tmp_path / "st", adapter=run, dtype="fp32", matryoshka_dims=[32, 16],
                 results=[results_file])  # fmt: skip
    card = _load(out)
    scores = _scores(card)
    assert scores[("stsb", "spearman")] == 81.25  # the results file
    assert scores[("stsb-paraphrase-mini", "ndcg_at_10")] == 50.0
    assert scores[("stsb-dev", "spearman")] == 84.125  # best.json's step, not the last (83.5)
    assert scores[("stsb-paraphrase", "ndcg_at_10")] == 90.5  # retrieval, told by its mrr@10
    kinds = {r.dataset_name: r.task_type for r in card.data.eval_results}
    assert kinds == {
        "stsb": "sentence-similarity",
        "stsb-dev": "sentence-similarity",
        "stsb-paraphrase": "retrieval",
        "stsb-paraphrase-mini": "retrieval",
    }
    assert card.data.base_model is None  # a local model has no public id
    assert card.data.datasets == [HUB_DATA]  # the hub source only
    assert base_temp not in str(card)  # no local path anywhere, the body included
    assert "snli.csv.gz" in card.text
    assert "**50** (best)" in card.text
    assert "truncate_dim=16" in card.text
    assert "| stsb | 81.25 | 80.75 | 12.00 | +69.25 |" in card.text  # base beside the score


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_writes_a_card_for_its_library(tmp_path, run, fmt):
    out = export(tmp_path / fmt, kind=fmt, adapter=run, dtype="fp32")
    card = _load(out)
    assert card.data.library_name == LIBRARY[fmt]
    assert {"lmembed", LIBRARY[fmt], "lora", "sentence-similarity"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "sentence-similarity"
    assert _scores(card)[("stsb-dev", "spearman")] == 84.125
    assert ("--backend " + fmt in card.text) == (fmt in ("onnx", "openvino"))


def test_training_run_card_without_evaluation_is_complete(tmp_path, tiny_llama, base_temp):
    folder = tmp_path / "plain-run"
    random_lora_adapter(folder, tiny_llama)
    assert not (folder / "README.md").exists()  # peft's empty template stays out
    card = ModelCard.load(write_card(folder, EmbeddingSpec.load(folder), run=folder))
    assert "[More Information Needed]" not in str(card)
    assert base_temp not in str(card)
    assert card.data.base_model is None and card.data.library_name == "peft"
    assert card.data.eval_results is None
    assert "No evaluation was recorded" in card.text
    assert "no `train_config.json`" in card.text and "no `data.json`" in card.text
    assert "ukarapol2024improving" in card.text
    assert "lmembed encode --adapter path/to/this/folder" in card.text


def test_without_keep_best_the_last_evaluation_is_reported(tmp_path, tiny_llama):
    folder = tmp_path / "run"
    random_lora_adapter(folder, tiny_llama)
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVALUATIONS))
    card = build_card(EmbeddingSpec.load(folder), run=folder)
    assert _scores(card)[("stsb-dev", "spearman")] == 83.5
    assert "**100** (last)" in card.text


@pytest.mark.parametrize(
    ("alias", "hub_id", "license"),
    [
        ("gemma-3-270m", "google/gemma-3-270m", "gemma"),
        ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
        ("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
    ],
)
def test_packaged_models_are_named_by_their_hub_id(alias, hub_id, license):
    assert public_base_model(alias) == hub_id
    card = build_card(EmbeddingSpec(model=alias, dtype="fp32"))  # loads no model
    assert card.data.base_model == hub_id and card.data.license == license


def test_every_packaged_model_has_a_public_entry():
    assert set(PUBLIC_MODELS) == set(PACKAGED_MODELS)


def test_only_hub_ids_pass_as_base_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "local").mkdir(parents=True)
    assert public_base_model("microsoft/phi-2") == "microsoft/phi-2"
    for local in ("owner/local", str(tmp_path), "/models/x", "~/x/y", "./a", "model.gguf",
                  "owner/model.gguf", "gemma-3-270m-local"):  # fmt: skip
        assert public_base_model(local) is None, local


BAD_RESULTS = {
    "not-json.json": "{tasks",
    "list.json": "[1, 2]",
    "no-tasks.json": json.dumps({"model": "x"}),
    "empty.json": json.dumps({"tasks": {}, "average": {}}),
    "text-score.json": json.dumps({"tasks": {"stsb": {"spearman": "high", "pearson": 1.0,
                                                      "pairs": 3}}}),
    "bad-retrieval.json": json.dumps({"tasks": {"q": {"ndcg@10": 1.0}}, "average": {}}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_RESULTS))
def test_bad_results_file_is_named(tmp_path, name):
    path = tmp_path / name
    path.write_text(BAD_RESULTS[name], encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        build_card(EmbeddingSpec(model="gemma-3-270m", dtype="fp32"), results=[path])


def test_export_refuses_a_bad_results_file_before_writing(tmp_path, run, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[]", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        export(out, kind="merged", adapter=run, results=[bad])
    with pytest.raises(SystemExit):
        main(["export", "--adapter", str(run), "--output", str(out), "--results", str(bad)])
    assert str(bad) in capsys.readouterr().err
    assert not out.exists()


def test_cli_results_reach_the_card(tmp_path, run, results_file):
    out = tmp_path / "adapter"
    main(["export", "--adapter", str(run), "--output", str(out), "--format", "adapter",
          "--results", str(results_file)])  # fmt: skip
    assert _scores(_load(out))[("stsb", "spearman")] == 81.25
