"""``lmembed`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import sys
import typing
from pathlib import Path

import numpy as np

from lmembed.training.config import TrainConfig


def _train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field, defaulting to None so only given flags override."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        is_list = field.default is dataclasses.MISSING
        default = field.default_factory() if is_list else field.default
        options = {"default": None, "help": f"{field.metadata['help']} (default: {default!r})"}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        value_type = next(a for a in typing.get_args(kind) or (kind,) if a is not type(None))
        parser.add_argument(
            flag,
            type=_comma_list if is_list else value_type,
            choices=field.metadata.get("choices"),
            **options,
        )


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _embedder_flags(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    parser.add_argument(
        "--model", required=model_required, help="model spec (alias, .gguf, folder, hub id)"
    )
    parser.add_argument("--adapter", help="trained adapter folder (restores its prompt/pooling)")
    parser.add_argument("--prompt", help="prompt template containing {s}")
    parser.add_argument("--pooling", choices=("last", "mean"))
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--dtype", choices=("bf16", "fp32"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--trust-remote-code", action="store_true")


def _load_embedder(args: argparse.Namespace):
    from lmembed.model.embedder import Embedder

    return Embedder.from_pretrained(
        args.model,
        adapter=args.adapter,
        prompt=args.prompt,
        pooling=args.pooling,
        max_length=args.max_length,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from lmembed.training.config import load_config
    from lmembed.training.trainer import train

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    result = train(load_config(args.config, **given))
    print(
        f"adapter saved to {result.output} after {result.steps} steps "
        f"(final loss {result.final_loss:.4f}, {result.seconds:.0f} s)"
    )


def cmd_encode(args: argparse.Namespace) -> None:
    from lmembed.io import atomic_write_bytes

    lines = Path(args.input).read_text(encoding="utf-8").splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise SystemExit(f"{args.input}: no non-empty lines to encode")
    vectors = _load_embedder(args).encode(texts, batch_size=args.batch_size)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    atomic_write_bytes(args.output, buffer.getvalue())
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} float32 vectors to {args.output}")


def cmd_eval(args: argparse.Namespace) -> None:
    from lmembed.evaluation import compare, evaluate, save_results, to_markdown

    embedder = _load_embedder(args)
    result = evaluate(embedder, args.tasks, args.data_dir, args.batch_size)
    if args.compare_base:
        spec = embedder.spec
        del embedder
        args.adapter = None
        args.model, args.prompt, args.pooling = spec.model, spec.prompt, spec.pooling
        args.max_length, args.dtype = spec.max_length, spec.dtype
        base = evaluate(_load_embedder(args), args.tasks, args.data_dir, args.batch_size)
        result["base"] = base
        print(compare(base, result))
    else:
        print(to_markdown(result))
    if args.output:
        save_results(result, args.output)
        print(f"results written to {args.output}")


def cmd_download(args: argparse.Namespace) -> None:
    from lmembed.data import DOWNLOAD_TASKS, download, resolve_tasks

    tasks = DOWNLOAD_TASKS if args.tasks == "all" else resolve_tasks(args.tasks)
    for name, path in download(args.to, tasks, nli=not args.no_nli).items():
        print(f"{name}: {path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from lmembed.experiments.demo import run_demo

    report = run_demo(
        output=args.output,
        data_dir=args.data_dir,
        steps=args.steps,
        full=args.full,
        model=args.model,
    )
    print(f"report: {report}")


def cmd_ablate(args: argparse.Namespace) -> None:
    import shlex

    from lmembed.experiments.ablate import run_ablation

    report = run_ablation(
        args.config,
        args.output,
        model=args.model,
        tasks=args.tasks,
        data_dir=args.data_dir,
        retry_failed=args.retry_failed,
        command=shlex.join(["lmembed", *sys.argv[1:]]),
    )
    print(f"report: {report}")


def cmd_export(args: argparse.Namespace) -> None:
    from lmembed.export import export

    output = export(
        args.output,
        model=args.model,
        adapter=args.adapter,
        format=args.format,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.format} export to {output}")


def cmd_serve(args: argparse.Namespace) -> None:
    from lmembed.serving import ServerConfig, require_serve_extra, serve

    try:
        require_serve_extra()
    except ImportError as error:
        raise SystemExit(f"lmembed serve: error: {error}") from None
    embedder = _load_embedder(args)
    config = ServerConfig(
        name=args.name or (Path(args.adapter).name if args.adapter else embedder.spec.model),
        batch_window_ms=args.batch_window_ms,
        batching=not args.no_batching,
        max_batch_inputs=args.max_batch_inputs,
        max_inputs=args.max_inputs,
        max_chars=args.max_chars,
        max_queue_inputs=args.max_queue,
        max_request_bytes=args.max_request_bytes,
        encode_batch_size=args.batch_size,
    )
    serve(embedder, config, host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmembed", description="Contrastive fine-tuning of small LMs into text embedders."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a model with LoRA on NLI triplets")
    train.add_argument("--config", help="YAML file of train options (flags override it)")
    _train_flags(train)
    train.set_defaults(run=cmd_train)

    encode = commands.add_parser("encode", help="embed one text per line into a .npy file")
    _embedder_flags(encode)
    encode.add_argument("--input", required=True, help="UTF-8 text file, one text per line")
    encode.add_argument("--output", required=True, help="output .npy (float32, rows = lines)")
    encode.set_defaults(run=cmd_encode)

    evaluate = commands.add_parser("eval", help="Spearman x100 on the STS benchmarks")
    _embedder_flags(evaluate, model_required=False)
    evaluate.add_argument("--tasks", default="all", help="all, quick, or a comma list")
    evaluate.add_argument("--data-dir", help="STS data folder (default: $LMEMBED_DATA_DIR)")
    evaluate.add_argument("--output", help="write the results JSON here")
    evaluate.add_argument(
        "--compare-base",
        action="store_true",
        help="also score the base model and show the delta per task",
    )
    evaluate.set_defaults(run=cmd_eval)

    data = commands.add_parser("data", help="data utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    download = data_commands.add_parser("download", help="fetch STS + NLI from the hub")
    download.add_argument("--to", required=True, help="folder to write the local layout into")
    download.add_argument("--tasks", default="all", help="all or a comma list of STS tasks")
    download.add_argument("--no-nli", action="store_true", help="skip the NLI training triplets")
    download.set_defaults(run=cmd_download)

    demo = commands.add_parser("demo", help="fine-tune gemma-3-270m and report before/after")
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--data-dir", help="data folder (default: $LMEMBED_DATA_DIR)")
    demo.add_argument("--steps", type=int, default=None, help="training steps")
    demo.add_argument("--full", action="store_true", help="evaluate all nine STS tasks")
    demo.add_argument("--model", default="gemma-3-270m")
    demo.set_defaults(run=cmd_demo)

    ablate = commands.add_parser("ablate", help="train and score a sweep of training options")
    ablate.add_argument("--config", required=True, help="sweep YAML, e.g. ablations/paper.yaml")
    ablate.add_argument("--output", required=True, help="sweep folder (rerun to resume)")
    ablate.add_argument("--model", help="override the sweep's model")
    ablate.add_argument("--tasks", help="override the sweep's STS tasks: all, quick or a list")
    ablate.add_argument("--data-dir", help="STS data folder (default: $LMEMBED_DATA_DIR)")
    ablate.add_argument("--retry-failed", action="store_true", help="rerun runs that failed")
    ablate.set_defaults(run=cmd_ablate)

    export = commands.add_parser(
        "export", help="write a model + adapter for sentence-transformers, transformers or peft"
    )
    export.add_argument("--model", help="base model (default: the one the adapter records)")
    export.add_argument("--adapter", help="trained adapter folder (lmembed train --output)")
    export.add_argument("--output", required=True, help="folder to write")
    export.add_argument(
        "--format",
        default="sentence-transformers",
        choices=("sentence-transformers", "merged", "adapter"),
    )
    export.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="saved weights dtype")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    export.add_argument("--trust-remote-code", action="store_true")
    export.set_defaults(run=cmd_export)

    serve = commands.add_parser(
        "serve", help="OpenAI-compatible embeddings server (lmembed[serve])"
    )
    _embedder_flags(serve, model_required=False)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--name", help="model id in responses (default: adapter folder name)")
    serve.add_argument("--batch-window-ms", type=float, default=5.0, help="micro-batch window")
    serve.add_argument("--no-batching", action="store_true", help="one encode call per request")
    serve.add_argument("--max-batch-inputs", type=int, default=128, help="texts per encode call")
    serve.add_argument("--max-inputs", type=int, default=512, help="texts per request (else 400)")
    serve.add_argument("--max-chars", type=int, default=16384, help="chars per text (else 400)")
    serve.add_argument("--max-queue", type=int, default=4096, help="texts waiting (else 503)")
    serve.add_argument("--max-request-bytes", type=int, default=8 << 20, help="body (else 413)")
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        # Input problems: one clear line, not a traceback.
        print(f"lmembed {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
