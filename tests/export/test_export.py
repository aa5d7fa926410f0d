"""Exports agree with ``Embedder.encode``: sentence-transformers, merged weights, adapter copy."""

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import SHARED_DATA, make_tiny_model

from lmembed import Embedder, TrainConfig, train
from lmembed.cli import main
from lmembed.data import load_sts
from lmembed.export import ExportError, export
from lmembed.export.sentence_transformers_folder import split_prompt

FORMATS = ("sentence-transformers", "merged", "adapter")
NLI = SHARED_DATA / "nli" / "snli_devtest_triplets_tok.csv.gz"
# Each case stresses one part of the recipe the ST folder must carry by itself.
CASES = {
    # suffix prompt, last token, right padding, most of the 50 sentences truncated
    "llama-suffix-truncated": dict(arch="llama", prompt="{s} is: ", pooling="last", max_length=24),
    # pad == eos, left padding, prefix prompt (the ST prompt), mean pooling
    "qwen2-padeos-left-prefix-mean": dict(
        arch="qwen2", pad_is_eos=True, padding_side="left", prompt="query: {s}", pooling="mean"
    ),
    # BOS-adding tokenizer (Gemma), left padding, prefix and suffix, no truncation
    "gemma3-left-prefix-suffix": dict(
        arch="gemma3",
        padding_side="left",
        prompt='This sentence: "{s}" means in one word:"',
        pooling="last",
        max_length=128,
    ),
}


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return load_sts("stsb", SHARED_DATA).sentences1[:50]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """``adapters(case)``: a tiny model of the case trained 2 steps (once per module)."""
    trained = {}

    def get(case: str):
        if case not in trained:
            trained[case] = _train(tmp_path_factory.mktemp(case), **CASES[case])
        return trained[case]

    return get


def _train(folder, arch, pad_is_eos=False, padding_side="right", **options):
    model = make_tiny_model(folder / arch, arch, pad_is_eos, padding_side)
    config = TrainConfig.from_flat(
        model=str(model), data=str(NLI), limit=32, output=str(folder / "run"), steps=2,
        batch_size=8, lr=2e-2, warmup=0, dtype="fp32", save_every=0, seed=0, **options,
    )  # fmt: skip
    return train(config).output


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _encode_export(folder, fmt: str, texts: list[str]) -> np.ndarray:
    if fmt == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=7)
    if fmt == "merged":
        return Embedder.from_pretrained(str(folder)).encode(texts, batch_size=9)
    return Embedder.from_pretrained(adapter=folder, dtype="fp32").encode(texts, batch_size=9)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_format_reproduces_encode(case, tmp_path, adapters, sentences):
    adapter = adapters(case)
    tuned = Embedder.from_pretrained(adapter=adapter, dtype="fp32")
    reference = tuned.encode(sentences, batch_size=16)
    base = Embedder.from_pretrained(
        tuned.spec.model, prompt=tuned.spec.prompt, pooling=tuned.spec.pooling,
        max_length=tuned.spec.max_length, dtype="fp32",
    ).encode(sentences)  # fmt: skip
    # The check below would pass for an export that forgot the LoRA weights otherwise.
    assert _cosines(base, reference).min() < 0.9999, "training changed too little to test"
    for fmt in FORMATS:
        out = export(tmp_path / fmt, adapter=adapter, kind=fmt, dtype="fp32")
        cosine = _cosines(_encode_export(out, fmt, sentences), reference)
        assert cosine.min() >= 0.9999, (fmt, cosine.min())


def test_truncated_case_really_truncates(tmp_path, adapters, sentences):
    """The llama case must exercise truncation, and the ST tokenizer must keep EOS there."""
    from transformers import AutoTokenizer

    options = CASES["llama-suffix-truncated"]
    adapter = adapters("llama-suffix-truncated")
    embedder = Embedder.from_pretrained(adapter=adapter, dtype="fp32")
    untruncated = embedder.tokenizer(embedder.apply_prompt(sentences))["input_ids"]
    assert sum(len(ids) + 1 > options["max_length"] for ids in untruncated) >= 25
    out = export(tmp_path / "st", adapter=adapter, dtype="fp32")
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(sentences, truncation=True)["input_ids"]
    assert ids == embedder.tokenize(sentences)
    assert all(row[-1] == tokenizer.eos_token_id for row in ids)


def test_sentence_transformers_folder_layout(tmp_path, adapters):
    adapter = adapters("qwen2-padeos-left-prefix-mean")
    out = export(tmp_path / "st", adapter=adapter)
    modules = json.loads((out / "modules.json").read_text())
    for module in modules:  # each class resolves in the installed sentence-transformers
        path, name = module["type"].rsplit(".", 1)
        assert path.startswith("sentence_transformers.")
        assert isinstance(getattr(importlib.import_module(path), name), type)
    config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert config["prompts"]["query"] == "query: " and config["default_prompt_name"] == "query"
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "mean"
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["padding_side"] == "left"
    assert (out / "model.safetensors").is_file()
    assert not (out / "lmembed.json").exists()  # Embedder would add EOS and the suffix twice
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"  # trained dtype


@pytest.mark.slow
def test_sentence_transformers_loads_without_lmembed(tmp_path, adapters, sentences):
    adapter = adapters("llama-suffix-truncated")
    reference = Embedder.from_pretrained(adapter=adapter, dtype="fp32").encode(sentences)
    out = export(tmp_path / "st", adapter=adapter, dtype="fp32")
    (tmp_path / "texts.json").write_text(json.dumps(sentences))
    script = (
        "import json, sys, numpy as np\n"
        "sys.modules['lmembed'] = None  # any import of lmembed now fails\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"texts = json.load(open({str(tmp_path / 'texts.json')!r}))\n"
        f"model = SentenceTransformer({str(out)!r}, device='cpu')\n"
        f"np.save({str(tmp_path / 'st.npy')!r}, model.encode(texts))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    vectors = np.load(tmp_path / "st.npy")
    assert _cosines(vectors, reference).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # normalised


def test_split_prompt():
    assert split_prompt(None) == ("", "")
    assert split_prompt("{s} is: ") == ("", " is: ")
    assert split_prompt("query: {s}") == ("query: ", "")
    with pytest.raises(ExportError, match="uses \\{s\\} 2 times"):
        split_prompt("{s} and again {s}")


def test_clear_errors(tmp_path, tiny_llama):
    with pytest.raises(ExportError, match="--format must be one of"):
        export(tmp_path / "x", model=str(tiny_llama), kind="tflite")
    with pytest.raises(ExportError, match="needs --adapter"):
        export(tmp_path / "x", model=str(tiny_llama), kind="adapter")
    with pytest.raises(FileNotFoundError, match="not an lmembed adapter"):
        export(tmp_path / "x", adapter=tiny_llama, kind="adapter")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(tmp_path / "full", model=str(tiny_llama), kind="merged")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_bidirectional_attention_exports_merged_and_is_refused_by_graph_formats(
    tmp_path, tiny_llama, sentences
):
    options = {"model": str(tiny_llama), "attention": "bidirectional", "dtype": "fp32"}
    for fmt in ("onnx", "openvino", "sentence-transformers"):
        with pytest.raises(ExportError, match=f"--format {fmt} .* --attention bidirectional"):
            export(tmp_path / fmt, kind=fmt, **options)
    out = export(tmp_path / "merged", kind="merged", **options)
    reloaded = Embedder.from_pretrained(model=str(out))
    assert reloaded.spec.attention == "bidirectional"
    want = Embedder.from_pretrained(**options).encode(sentences)
    np.testing.assert_allclose(reloaded.encode(sentences), want, atol=1e-5)


def test_adapter_export_copies_only_the_adapter(tmp_path, adapters):
    adapter = adapters("llama-suffix-truncated")
    out = export(tmp_path / "copy", adapter=adapter, kind="adapter")
    names = sorted(p.name for p in out.iterdir())
    expected = ["README.md", "adapter_config.json", "adapter_model.safetensors", "lmembed.json"]
    assert names == expected


def test_cli_export(tmp_path, adapters, capsys):
    adapter = adapters("llama-suffix-truncated")
    out = tmp_path / "merged"
    main(["export", "--adapter", str(adapter), "--output", str(out), "--format", "merged"])
    assert "merged export" in capsys.readouterr().out
    assert Embedder.from_pretrained(str(out)).spec.prompt == "{s} is: "
    with pytest.raises(SystemExit):  # exists: refused with a one-line error
        main(["export", "--adapter", str(adapter), "--output", str(out), "--format", "merged"])
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_exports_agree(tmp_path, triplets_csv, sentences):
    """A real model: SmolLM2 (pad == eos, GPT-2 style byte-level BPE, a chat template)."""
    config = TrainConfig.from_flat(
        model="smollm2-135m", data=str(triplets_csv), output=str(tmp_path / "run"), steps=2,
        batch_size=4, lr=1e-3, warmup=0, dtype="fp32", save_every=0, prompt="{s} is: ",
        max_length=32,
    )  # fmt: skip
    adapter = train(config).output
    reference = Embedder.from_pretrained(adapter=adapter, dtype="fp32").encode(sentences)
    for fmt in FORMATS:
        out = export(tmp_path / fmt, adapter=adapter, kind=fmt, dtype="fp32")
        cosine = _cosines(_encode_export(out, fmt, sentences), reference)
        assert cosine.min() >= 0.9999, (fmt, cosine.min())
