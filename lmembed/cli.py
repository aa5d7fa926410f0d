"""``lmembed`` command line: parses arguments and calls the library, nothing more.

Every flag comes from a dataclass declaration (``lmembed.options``): the embedding
flags from ``EmbeddingSpec`` (shared by train, eval, encode, serve and export), the
training flags from ``TrainConfig``, the server's from ``ServerConfig`` and each
command's own from its options class below. A new option is one field there.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmembed.backends import BackendOptions
from lmembed.backends.errors import Quantize
from lmembed.evaluation.sizes import SizeOptions
from lmembed.export import ExportFormat
from lmembed.model.spec import EmbeddingSpec
from lmembed.options import add_flags, build, given, nested, option
from lmembed.training.checkpoint import CheckpointWriteError
from lmembed.training.config import TrainConfig, load_config

TRAIN_LAYOUTS = """\
training data layouts (--data FILE|DIR|HUB_ID, repeat for several datasets):
  pairs                     anchor, positive                   in-batch negatives only
  SimCSE triplets           sent0, sent1, hard_neg             one hard negative per anchor
  sentence-transformers     anchor, positive, negative[_1..k]  k hard negatives per anchor
  FlagEmbedding jsonl       {"query", "pos": [...], "neg": [...]}
  query/positive/negatives  query, positive, negatives (a list)
  anything else             --columns anchor=question,positive=answer,negatives=neg_*
  texts (with --teacher)    text (one column)                  --loss none: distillation only
formats: .csv .tsv .jsonl (also .gz), .parquet, a folder of them, a hub dataset id.
Every negative is a candidate for every anchor of the global batch; --negatives-per-anchor K
uses K of them; a batch never holds two examples with the same anchor or positive text
(--no-dedupe); several datasets: one dataset per batch, --mixing proportional|round-robin|
weights=a:0.7,b:0.3."""


@dataclass
class EvalOptions:
    """``lmembed eval``: what to score and where the results go."""

    tasks: str = option(
        "all",
        "comma list of: all, quick, STS task names, your own STS files (.tsv/.csv/.jsonl with "
        "sentence1, sentence2, score), retrieval task names (stsb-paraphrase) or BEIR folders",
    )
    retrieval: list[str] = option(
        [], "BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/) to score", repeat=True
    )
    data_dir: str | None = option(None, "data folder (default: $LMEMBED_DATA_DIR)")
    output: str | None = option(None, "write the results JSON here")
    compare_base: bool = option(False, "also score the base model and show the delta per task")
    batch_size: int = option(32, "texts per forward pass")
    sizes: SizeOptions = nested(
        SizeOptions, prefix="", help="score at several sizes and precisions instead"
    )


@dataclass
class ExportOptions:
    """``lmembed export``: where and in which format (``dtype`` is the saved weights')."""

    output: str = option(None, "folder to write", required=True)
    format: ExportFormat = option(
        "sentence-transformers",
        "what to write: a SentenceTransformer folder, merged transformers weights, the "
        "adapter files alone, an ONNX or OpenVINO graph, or one GGUF file for llama.cpp "
        "and Ollama",
    )
    overwrite: bool = option(False, "replace a non-empty --output")
    normalize: bool = option(
        True, "sentence-transformers: unit-length vectors (a Normalize module), as encode gives"
    )
    quantize: Quantize | None = option(
        None,
        "int8 weights for --format onnx|openvino: int8 (ONNX Runtime dynamic quantisation) "
        "or int8-block (blocks of 32, MatMulNBits: for models whose activations "
        "have outliers, e.g. Gemma-3); every int8 graph is checked against torch. "
        "--format gguf: f16 (default) or q8_0 (int8 in blocks of 32) weight matrices",
    )
    results: list[str] = option(
        [],
        "an `lmembed eval --output` JSON whose scores the model card (README.md) reports "
        "(repeatable)",
        repeat=True,
    )


@dataclass
class DemoOptions:
    """``lmembed demo``: the main job, before/after on the default model."""

    output: str | None = option(
        None, "demo folder, rerun to resume (default: runs/demo, with --full runs/demo-full)"
    )
    data_dir: str | None = option(None, "data folder (default: $LMEMBED_DATA_DIR)")
    steps: int | None = option(None, "training steps (default: the recipe's)")
    full: bool = option(
        False,
        "the 30-minute recipe with all-MiniLM-L6-v2 as teacher "
        "(configs/gemma-3-270m-cpu-distill.yaml), scored on all nine STS tasks",
    )
    model: str = option("gemma-3-270m", "model to fine-tune")
    report_to: list[str] = option(
        ["jsonl"], "trackers for the training run, as `lmembed train --report-to` takes them"
    )
    publish: str | None = option(
        None,
        "also copy the result files into this folder (docs/results/demo) and print the "
        "README's results table made from them",
    )


@dataclass
class AblateOptions:
    """``lmembed ablate``: a sweep of training options, trained and scored."""

    config: str = option(None, "sweep YAML, e.g. ablations/paper.yaml", required=True)
    output: str = option(None, "sweep folder (rerun to resume)", required=True)
    model: str | None = option(None, "override the sweep's model")
    tasks: str | None = option(None, "override the sweep's STS tasks: all, quick or a list")
    data_dir: str | None = option(None, "data folder (default: $LMEMBED_DATA_DIR)")
    retry_failed: bool = option(False, "rerun runs that failed")


@dataclass
class DownloadOptions:
    """``lmembed data download``: STS sets and NLI triplets from the hub, local layout."""

    to: str = option(None, "folder to write the local layout into", required=True)
    tasks: str = option("all", "all or a comma list of STS tasks")
    nli: bool = option(True, "also fetch SimCSE's NLI training triplets")


@dataclass(frozen=True)
class Request:
    """What a command runs with: the embedding flags the user typed (``spec``; the
    adapter's saved spec fills the rest), the inference engine, and the command's own
    options object (for ``train``, the ``TrainConfig``: file, then flags)."""

    spec: dict[str, Any]
    engine: BackendOptions
    options: Any


def _load(request: Request) -> Any:
    """The embedder the embedding flags describe, on the ``--backend`` engine.

    ONNX Runtime and OpenVINO run the model on threads of their own, and torch then only
    pads and pools small tensors: on one thread, so that torch's OpenMP workers do not wait
    for cores the engine's threads hold.
    """
    from lmembed.backends import load_encoder

    if request.engine.backend != "torch":
        torch.set_num_threads(1)
    return load_encoder(request.spec, **dataclasses.asdict(request.engine))


def cmd_train(request: Request) -> None:
    from lmembed.training.trainer import train

    result = train(request.options)
    print(
        f"adapter saved to {result.output} after {result.steps} steps "
        f"(final loss {result.final_loss:.4f}, {result.seconds:.0f} s training"
        + (f", {result.eval_seconds:.0f} s evaluating)" if result.eval_seconds else ")")
    )
    if result.stopped_early:
        print("early stopping ended the run: no better score in the last evaluations")
    if result.best:
        best = result.best
        print(f"kept step {best['step']} ({best['metric']} {best['score']:.2f}); "
              f"the final step's adapter is in {Path(result.output) / 'last'}")  # fmt: skip
    elif result.last_scores:
        print("last evaluation: " + ", ".join(
            f"{k} {v:.2f}" for k, v in result.last_scores.items()))  # fmt: skip


def cmd_encode(request: Request) -> None:
    """``--output X.npy``: a small text file in memory; ``--output DIR``: sharded corpus."""
    from lmembed.encoding import encode_corpus
    from lmembed.io import atomic_write_npy
    from lmembed.quantization import save_ranges, shrink

    options = request.options
    if not options.input or not options.output:
        raise ValueError("give --input FILE and --output (a .npy file or a folder)")
    embedder = _load(request)
    if not options.output.endswith(".npy"):
        print(f"manifest: {encode_corpus(embedder, options)}")
        return
    lines = Path(options.input).read_text(encoding="utf-8").splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise SystemExit(f"{options.input}: no non-empty lines to encode")
    vectors = embedder.encode(texts, batch_size=options.batch_size, role=options.role)
    codes, ranges = shrink(vectors, options.dims, options.precision, options.normalize)
    if ranges is not None:  # int8/uint8: later batches must reuse these ranges
        save_ranges(Path(options.output).with_suffix(".ranges.npy"), ranges)
    atomic_write_npy(options.output, codes)
    print(f"wrote {codes.shape[0]} x {codes.shape[1]} {codes.dtype} vectors to {options.output}")


def cmd_eval(request: Request) -> None:
    from lmembed.data.retrieval import split_tasks
    from lmembed.evaluation import EvalRun, evaluate
    from lmembed.evaluation.retrieval import evaluate_retrieval
    from lmembed.model.resolve import resolve_spec

    options = request.options
    selection = split_tasks(options.tasks)
    retrieval_tasks = [*selection.retrieval, *options.retrieval]
    if options.sizes.dims or options.sizes.precision != ["float32"]:
        _eval_sizes(request, selection.sts, retrieval_tasks)
        return

    def score(embedder: Any) -> EvalRun:
        run = EvalRun()
        if selection.sts:
            run.sts = evaluate(embedder, selection.sts, options.data_dir, options.batch_size)
        if retrieval_tasks:
            run.retrieval = evaluate_retrieval(
                embedder, retrieval_tasks, options.data_dir, options.batch_size
            )
        return run

    run = score(_load(request))
    if options.compare_base:
        base_spec = resolve_spec(request.spec).replace(adapter=None).to_dict()
        run = run.against(score(_load(dataclasses.replace(request, spec=base_spec))))
    print(run.to_markdown())
    if options.output:
        run.save(options.output)
        print(f"results written to {options.output}")


def _eval_sizes(request: Request, sts: list[str], retrieval: list[str]) -> None:
    """``--dims``/``--precision``: one table (and plot) of every size x precision."""
    from lmembed.evaluation.sizes import evaluate_sizes

    options = request.options
    sizes = options.sizes
    table = evaluate_sizes(
        _load(request), sizes.dims, sizes.precision, sts, options.data_dir, retrieval,
        options.batch_size,
    )  # fmt: skip
    print(table.to_markdown())
    if options.output:
        paths = table.save(Path(options.output).with_suffix(""))
        print("results written to " + ", ".join(str(p) for p in paths))


def cmd_download(request: Request) -> None:
    from lmembed.data import DOWNLOAD_TASKS, download, resolve_tasks

    options = request.options
    tasks = DOWNLOAD_TASKS if options.tasks == "all" else resolve_tasks(options.tasks)
    for name, path in download(options.to, tasks, nli=options.nli).items():
        print(f"{name}: {path}")


def cmd_demo(request: Request) -> None:
    from lmembed.experiments.demo import publish_results, results_table, run_demo

    options = request.options
    chosen = dataclasses.asdict(options)
    publish = chosen.pop("publish")
    report = run_demo(**chosen)
    print(f"report: {report}")
    if publish:
        print(results_table(publish_results(report.parent, publish)))


def cmd_ablate(request: Request) -> None:
    from lmembed.experiments.ablate import run_ablation

    options = request.options
    command = shlex.join(["lmembed", *sys.argv[1:]])
    print(f"report: {run_ablation(**dataclasses.asdict(options), command=command)}")


def cmd_export(request: Request) -> None:
    from lmembed.export import export

    options = request.options
    output = export(
        options.output,
        options.format,
        options.overwrite,
        quantize=options.quantize,
        normalize=options.normalize,
        results=options.results,
        **request.spec,
    )
    print(f"wrote {options.format} export to {output}")


def cmd_mine(request: Request) -> None:
    from lmembed.model.embedder import Embedder
    from lmembed.retrieval.mine import mine

    options = request.options
    summary = mine(Embedder.from_pretrained(**request.spec), options)
    print(", ".join(f"{key} {value}" for key, value in summary.to_dict().items()))


def cmd_serve(request: Request) -> None:
    from lmembed.serving import require_serve_extra, serve

    options = request.options
    try:
        require_serve_extra()
    except ImportError as error:
        raise SystemExit(f"lmembed serve: error: {error}") from None
    serve(lambda: _load(request), options)  # serve times the load (a metric)


@dataclass(frozen=True)
class Command:
    """A subcommand: its flags' declarations and the function that runs it."""

    name: str
    help: str
    run: Callable[[Request], None]
    options: type
    embedding: bool = False  # takes the EmbeddingSpec flags
    backend: bool = False  # takes --backend (torch, onnx, openvino)
    # Reads a --config YAML file with the flags on top (``load_config``'s signature).
    from_file: Callable[..., Any] | None = None
    epilog: str | None = None


def _server_config() -> type:
    from lmembed.serving import ServerConfig

    return ServerConfig


def _encode_options() -> type:
    from lmembed.encoding import EncodeCorpusOptions

    return EncodeCorpusOptions


def _mine_options() -> type:
    from lmembed.retrieval.mine import MineOptions

    return MineOptions


def commands() -> list[Command]:
    return [
        Command("train", "fine-tune a model with LoRA (flags override --config)", cmd_train,
                TrainConfig, from_file=load_config, epilog=TRAIN_LAYOUTS),
        Command("encode", "embed texts: a .txt file into a .npy, or a corpus of any size "
                "into shards + manifest", cmd_encode, _encode_options(), embedding=True,
                backend=True),
        Command("eval", "STS (Spearman x100) and retrieval scores", cmd_eval, EvalOptions,
                embedding=True, backend=True),
        Command("data download", "fetch STS + NLI from the hub", cmd_download, DownloadOptions),
        Command("demo", "fine-tune gemma-3-270m and report before/after", cmd_demo, DemoOptions),
        Command("ablate", "train and score a sweep of training options", cmd_ablate,
                AblateOptions),
        Command("export", "write a model + adapter for sentence-transformers, transformers, "
                "peft, ONNX/OpenVINO or llama.cpp (GGUF)", cmd_export, ExportOptions,
                embedding=True),
        Command("mine", "mine hard negatives for (anchor, positive) pairs into a file "
                "`lmembed train` reads", cmd_mine, _mine_options(), embedding=True),
        Command("serve", "OpenAI-compatible embeddings server (lmembed[serve])", cmd_serve,
                _server_config(), embedding=True, backend=True),
    ]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmembed", description="Contrastive fine-tuning of small LMs into text embedders."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in commands():
        *group, name = command.name.split()
        target = subparsers
        if group:
            if group[0] not in groups:
                holder = subparsers.add_parser(group[0], help=f"{group[0]} utilities")
                groups[group[0]] = holder.add_subparsers(dest=f"{group[0]}_command", required=True)
            target = groups[group[0]]
        sub = target.add_parser(
            name,
            help=command.help,
            description=command.help,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        spec_names, engine_names = [], []
        if command.embedding:
            spec_names = add_flags(sub, EmbeddingSpec, group="embedding (default: the adapter's)")
        if command.backend:
            engine_names = add_flags(sub, BackendOptions, group="inference engine")
        flat_names = add_flags(sub, command.options)
        if command.from_file is not None:
            sub.add_argument("--config", help="YAML file of options (flags override it)")
        sub.set_defaults(command=command, spec_names=spec_names, engine_names=engine_names,
                         flat_names=flat_names)  # fmt: skip
    return parser


def request(args: argparse.Namespace) -> Request:
    """The parsed flags as the command's ``Request`` (only what the user typed)."""
    command: Command = args.command
    chosen = given(args, args.flat_names)
    if command.from_file is not None:
        options = command.from_file(args.config, **chosen)
    else:
        options = build(command.options, chosen, f"lmembed {command.name}")
    engine = build(BackendOptions, given(args, args.engine_names), "inference engine")
    return Request(given(args, args.spec_names), engine, options)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    command: Command = args.command
    try:
        command.run(request(args))
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointWriteError) as error:
        # Input problems and a full disk: one clear line, not a traceback.
        print(f"lmembed {command.name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
