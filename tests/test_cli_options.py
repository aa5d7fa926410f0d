"""Every command's flags come from the dataclass declarations (one place per option)."""

import argparse
import dataclasses
from dataclasses import dataclass

import pytest
import torch

from lmembed import cli
from lmembed.backends import BackendOptions
from lmembed.model.resolve import resolve_spec
from lmembed.model.spec import EmbeddingSpec, resolve_dtype
from lmembed.options import build, flat_fields, given, option
from lmembed.training.config import TrainConfig

EMBEDDING_COMMANDS = ("train", "eval", "encode", "serve", "export")
NOT_OPTIONS = {"help", "verbose"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _subparsers(sub)
                found.update({f"{name} {k}": v for k, v in nested.items()} or {name: sub})
    return found


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest not in NOT_OPTIONS}


def test_every_flag_of_every_command_is_a_declared_option():
    parsers = _subparsers(cli.build_parser())
    commands = {command.name: command for command in cli.commands()}
    assert set(parsers) == set(commands)
    for name, parser in parsers.items():
        command = commands[name]
        declared = {f.name for f in flat_fields(command.options)}
        if command.embedding:
            declared |= {f.name for f in flat_fields(EmbeddingSpec)}
        if command.backend:
            declared |= {f.name for f in flat_fields(BackendOptions)}
        if command.from_file is not None:
            declared.add("config")  # the YAML file the flags override
        assert _dests(parser) == declared, name
    spec_options = {f.name for f in flat_fields(EmbeddingSpec)}
    for name in EMBEDDING_COMMANDS:
        assert spec_options <= _dests(parsers[name]), f"{name} lacks embedding flags"


def test_a_new_embedding_option_reaches_every_command_and_the_saved_spec(monkeypatch, tmp_path):
    """The issue's check: one field added to EmbeddingSpec shows up everywhere."""

    @dataclass
    class WiderSpec(EmbeddingSpec):
        throwaway: int = option(7, "a throwaway option for this test")

    monkeypatch.setattr(cli, "EmbeddingSpec", WiderSpec)
    parsers = _subparsers(cli.build_parser())
    for name in ("eval", "encode", "serve", "export"):
        assert "throwaway" in _dests(parsers[name]), name
    args = parsers["eval"].parse_args(["--model", "m", "--throwaway", "3"])
    assert args.throwaway == 3
    spec = WiderSpec(model="m", throwaway=3)
    spec.save(tmp_path)
    assert WiderSpec.load(tmp_path).throwaway == 3

    @dataclass
    class WiderConfig(TrainConfig):
        embedding: WiderSpec = dataclasses.field(
            default_factory=WiderSpec, metadata={"nested": WiderSpec, "prefix": ""}
        )

    config = build(WiderConfig, {"throwaway": 5, "model": "m"})
    assert config.embedding.throwaway == 5 and config.to_dict()["throwaway"] == 5


def test_one_resolution_rule_saved_spec_then_explicit_options(tmp_path):
    EmbeddingSpec(model="base", prompt="{s} is: ", pooling="mean", max_length=64).save(tmp_path)
    restored = resolve_spec(adapter=str(tmp_path))
    assert (restored.model, restored.prompt, restored.pooling) == ("base", "{s} is: ", "mean")
    explicit = resolve_spec({"adapter": str(tmp_path), "pooling": "last", "max_length": None})
    assert explicit.pooling == "last" and explicit.max_length == 64
    with pytest.raises(ValueError, match="give a model"):
        resolve_spec()


@pytest.mark.parametrize("native", [True, False])
def test_dtype_auto_resolves_by_hardware_and_the_saved_spec_keeps_the_choice(
    native, monkeypatch, tmp_path
):
    monkeypatch.setattr("lmembed.model.spec.native_bf16", lambda: native)
    expected = "bf16" if native else "fp32"
    assert EmbeddingSpec(model="base").dtype == expected  # auto is the default
    assert EmbeddingSpec(model="base", dtype="fp16").dtype == "fp16"  # explicit wins
    assert resolve_dtype("auto") == expected and resolve_dtype("fp16") == "fp16"
    EmbeddingSpec(model="base", dtype="auto").save(tmp_path)
    monkeypatch.setattr("lmembed.model.spec.native_bf16", lambda: not native)
    assert resolve_spec(adapter=str(tmp_path)).dtype == expected  # the saved choice
    assert resolve_spec(adapter=str(tmp_path), dtype="auto").dtype != expected  # asked again


def test_train_flags_override_yaml_and_reach_nested_options(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: m\nlora: {r: 16}\nprompt: '{s} is: '\ndata: a.csv\n")
    args = _subparsers(cli.build_parser())["train"].parse_args(
        ["--lora-alpha", "64", "--data", "a.csv", "--data", "b.jsonl", "--query-prompt", "q: {s}"]
    )
    from lmembed.training.config import load_config

    config = load_config(path, **given(args, [f.name for f in flat_fields(TrainConfig)]))
    assert (config.lora.r, config.lora.alpha) == (16, 64)
    assert config.dataset.data == ["a.csv", "b.jsonl"]
    assert config.embedding.template("query") == "q: {s}"
    assert config.embedding.template("document") == "{s} is: "


def test_encode_command_writes_what_the_embedder_gives(tiny_llama, tmp_path):
    import numpy as np

    from lmembed.model.embedder import Embedder

    texts = ["a man plays a guitar .", "", "the dog runs"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    flags = ["--model", str(tiny_llama), "--dtype", "fp32", "--input", str(tmp_path / "in.txt")]
    cli.main(["encode", *flags, "--role", "query", "--output", str(tmp_path / "v.npy")])
    expected = Embedder.from_pretrained(str(tiny_llama), dtype="fp32").encode(
        [texts[0], texts[2]], role="query"
    )
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)  # normalised by default
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), unit, rtol=1e-5, atol=1e-6)
    raw = ["--role", "query", "--no-normalize", "--output", str(tmp_path / "r.npy")]
    cli.main(["encode", *flags, *raw])
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), expected, rtol=1e-5, atol=1e-6)


def _pairs_file(folder) -> str:
    """A four-pair STS file of the user-file layout (sentence1, sentence2, score)."""
    rows = [("a man plays a guitar .", "a man plays music .", 4.5),
            ("a dog runs .", "a cat sleeps .", 1.0),
            ("the sky is blue .", "the sky is clear .", 3.5),
            ("two kids swim .", "stocks fell today .", 0.0)]  # fmt: skip
    path = folder / "pairs.tsv"
    lines = ["sentence1\tsentence2\tscore"] + [f"{a}\t{b}\t{s}" for a, b, s in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_eval_scores_an_own_sts_file_at_several_sizes(tiny_llama, tmp_path, capsys):
    import json

    path = _pairs_file(tmp_path)
    flags = ["--model", str(tiny_llama), "--dtype", "fp32", "--tasks", path]
    cli.main(["eval", *flags, "--output", str(tmp_path / "plain.json")])
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert list(plain["tasks"]) and plain["tasks"][next(iter(plain["tasks"]))]["pairs"] == 4
    capsys.readouterr()
    cli.main(["eval", *flags, "--dims", "16,8", "--precision", "float32,int8"])
    table = capsys.readouterr().out
    for row in ("| 16 | float32 |", "| 16 | int8 |", "| 8 | float32 |", "| 8 | int8 |"):
        assert row in table, table


def test_inference_commands_merge_lora_unless_told_not_to(tiny_llama, tmp_path):
    from peft import PeftModel
    from tiny_models import random_lora_adapter

    adapter = random_lora_adapter(tmp_path / "adapter", tiny_llama)
    parser = cli.build_parser()
    for flags, separate in (([], False), (["--no-merge-lora"], True)):
        args = parser.parse_args(["eval", "--adapter", adapter, *flags])
        embedder = cli._load(cli.request(args))
        assert isinstance(embedder.model, PeftModel) == separate, flags


def test_runtime_precision_flag_reaches_the_loader_beside_the_sizes_precision(
    monkeypatch, tmp_path
):
    """--runtime-precision (OpenVINO's compute precision) is an engine flag, apart from
    --dtype (the embedding spec's) and from eval's --precision (the vectors' sizes)."""
    calls = []
    monkeypatch.setattr(
        "lmembed.backends.load_encoder", lambda spec, **engine: calls.append((spec, engine))
    )
    args = cli.build_parser().parse_args(
        ["eval", "--model", str(tmp_path), "--backend", "openvino",
         "--runtime-precision", "bf16", "--precision", "float32,int8"]
    )  # fmt: skip
    assert args.precision == ["float32", "int8"] and args.runtime_precision == "bf16"
    cli._load(cli.request(args))
    ((spec, engine),) = calls
    assert engine == {"backend": "openvino", "merge_lora": True, "runtime_precision": "bf16"}
    assert "runtime_precision" not in spec and "dtype" not in spec
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["eval", "--runtime-precision", "fp16"])


def test_eval_compare_base_beside_engine_flags(tiny_llama, tmp_path):
    """--compare-base rebuilds the base model's spec from the embedding flags only: the
    engine flags (--backend, --no-merge-lora) go to the loader, not into the spec."""
    import json

    from tiny_models import random_lora_adapter

    adapter = random_lora_adapter(tmp_path / "adapter", tiny_llama)
    out = tmp_path / "scores.json"
    cli.main(["eval", "--adapter", adapter, "--tasks", _pairs_file(tmp_path),
              "--compare-base", "--no-merge-lora", "--output", str(out)])  # fmt: skip
    scores = json.loads(out.read_text())
    assert scores["base"]["model"] == str(tiny_llama) and scores["base"]["adapter"] is None
    assert scores["adapter"] == adapter


@pytest.mark.parametrize(("backend", "threads"), [("openvino", 1), ("onnx", 1), ("torch", 2)])
def test_a_runtime_engine_leaves_torch_one_thread(monkeypatch, tmp_path, backend, threads):
    """With ONNX Runtime or OpenVINO running the model, torch's pooling runs on one thread;
    the torch engine keeps torch's threads."""
    monkeypatch.setattr("lmembed.backends.load_encoder", lambda spec, **engine: None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cli._load(cli.request(cli.build_parser().parse_args(
            ["eval", "--model", str(tmp_path), "--backend", backend])))  # fmt: skip
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
