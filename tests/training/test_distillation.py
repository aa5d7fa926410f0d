"""Distillation from a teacher through the trainer: the cache, GradCache, torchrun, resume,
text-only data, every layout, and a trained adapter as the teacher (tiny random models)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from tiny_models import TINY, require_packaged_model, tiny_tokenizer
from training_checks import random_lora_embedder
from transformers import AutoModel
from transformers.models.qwen2.configuration_qwen2 import Qwen2Config

from lmembed.data.errors import DataError
from lmembed.data.layouts import resolve_layout
from lmembed.data.training import Batch, DataOptions, load_training_data
from lmembed.losses import TeacherRows
from lmembed.model.embedder import Embedder
from lmembed.model.spec import resolve_dtype
from lmembed.training import trainer as trainer_module
from lmembed.training.config import TrainConfig, load_config
from lmembed.training.distributed import Distributed, average_gradients, mean_across
from lmembed.training.run_dir import read_metrics
from lmembed.training.teacher import (
    GROUP_PASSES,
    DistillOptions,
    TeacherCache,
    cache_folder,
    prepare_teacher,
    teacher_spec,
    text_key,
)
from lmembed.training.trainer import (
    batch_texts,
    build_training_loss,
    forward_backward,
    train,
)

TEACHER_WIDTH = 48  # the student is 32 wide
SUBJECTS = ["a man", "a woman", "the dog", "the cat", "two children", "three people"]
ACTIONS = ["is sitting", "is running", "is eating", "is playing", "is walking"]


def make_wide_teacher(folder: Path) -> Path:
    """A tiny random Qwen2 of another width than the student (tiny_models' are 32 wide)."""
    tokenizer = tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), **{**TINY, "hidden_size": TEACHER_WIDTH})
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch.manual_seed(1)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory) -> Path:
    return make_wide_teacher(tmp_path_factory.mktemp("teacher") / "qwen2-48")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch) -> Path:
    """Every test fills its own teacher cache, never ~/.cache."""
    monkeypatch.setenv("LMEMBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _texts_csv(path: Path, n: int = 32) -> Path:
    rows = ["text"] + [f"{SUBJECTS[i % 6]} {ACTIONS[i % 5]} near car {i} ." for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _config(model, data, output, teacher, **changes) -> TrainConfig:
    base = dict(
        model=str(model), data=str(data), output=str(output), teacher=str(teacher), steps=4,
        batch_size=8, lr=1e-3, warmup=1, dtype="fp32", save_every=2, seed=0,
        teacher_batch_size=2,
    )  # fmt: skip
    return TrainConfig.from_flat(**{**base, **changes})


def _adapter(folder: Path) -> dict[str, bytes]:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    return {name: t.numpy().tobytes() for name, t in tensors.items()}


class Calls:
    """Counts the teacher's loads and forward passes (``encode_ids``: the student never
    calls it while training without evaluation)."""

    def __init__(self, monkeypatch) -> None:
        self.loads = self.passes = 0
        from_spec, encode_ids = Embedder.from_spec.__func__, Embedder.encode_ids

        def counted_load(cls, *args, **kwargs):
            self.loads += 1
            return from_spec(cls, *args, **kwargs)

        def counted_pass(embedder, *args, **kwargs):
            self.passes += 1
            return encode_ids(embedder, *args, **kwargs)

        monkeypatch.setattr(Embedder, "from_spec", classmethod(counted_load))
        monkeypatch.setattr(Embedder, "encode_ids", counted_pass)


# --- the cache --------------------------------------------------------------------------


def test_cache_is_filled_once_and_a_second_run_trains_the_same_adapter(
    tiny_llama, wide_teacher, triplets_csv, tmp_path, monkeypatch
):
    """The second run (another output folder) loads no teacher and runs no teacher pass,
    yet trains the same adapter bit for bit: filling the cache moves no RNG."""
    calls = Calls(monkeypatch)
    first = train(_config(tiny_llama, triplets_csv, tmp_path / "first", wide_teacher))
    assert calls.loads == 1 and calls.passes >= 2
    summary = json.loads((tmp_path / "first" / "teacher.json").read_text())
    assert summary["computed"] == summary["texts"] > 0
    assert 0 < first.teacher_seconds < first.seconds
    calls.loads = calls.passes = 0
    train(_config(tiny_llama, triplets_csv, tmp_path / "second", wide_teacher))
    assert (calls.loads, calls.passes) == (0, 0)
    again = json.loads((tmp_path / "second" / "teacher.json").read_text())
    assert again["computed"] == 0 and again["texts"] == summary["texts"]
    assert _adapter(tmp_path / "first") == _adapter(tmp_path / "second")


def test_cache_survives_a_crash_mid_fill(
    tiny_llama, wide_teacher, triplets_csv, tmp_path, monkeypatch, _own_cache
):
    """A run dies after the first part (and leaves what a SIGKILL would: a temp file and a
    part's vectors without keys); the next run embeds only the missing groups, and every
    vector equals an uninterrupted fill's, bit for bit."""
    config = _config(tiny_llama, triplets_csv, tmp_path / "run", wide_teacher)
    clean = _fill_vectors(config, tmp_path / "clean-cache", monkeypatch)

    calls = Calls(monkeypatch)
    original = TeacherCache.write

    def dies_after_one_part(self, keys, vectors):
        if list(self.folder.glob("part-*.keys.npy")):
            (self.folder / "part-torn.npy").write_bytes(b"\x93NUMPY half a file")
            (self.folder / ".part-x.keys.npy.123.tmp").write_bytes(b"")
            raise KeyboardInterrupt("simulated kill")
        original(self, keys, vectors)

    with monkeypatch.context() as patch:
        patch.setattr(TeacherCache, "write", dies_after_one_part)
        with pytest.raises(KeyboardInterrupt):
            train(config)
    written = calls.passes - 1  # the group that died wrote nothing
    calls.passes = 0
    train(config.replace(resume=True))
    groups = math.ceil(len(clean) / (GROUP_PASSES * config.distill.teacher_batch_size))
    assert groups >= 3 and calls.passes == groups - written == groups - 1
    assert _vectors(TeacherCache(cache_folder(teacher_spec(config.distill)))) == clean


def _fill_vectors(config: TrainConfig, cache: Path, monkeypatch) -> dict[bytes, bytes]:
    with monkeypatch.context() as patch:
        patch.setenv("LMEMBED_CACHE", str(cache))
        train(config.replace(output=str(cache / "run")))
        return _vectors(TeacherCache(cache_folder(teacher_spec(config.distill))))


def _vectors(cache: TeacherCache) -> dict[bytes, bytes]:
    return {key: cache.lookup([key]).tobytes() for key in cache.index}


# --- GradCache and torchrun --------------------------------------------------------------


def _teacher_rows(n: int, k: int, seed: int = 3) -> TeacherRows:
    generator = torch.Generator().manual_seed(seed)

    def rows(count: int) -> torch.Tensor:
        return torch.randn(count, TEACHER_WIDTH, generator=generator)

    return TeacherRows(rows(n), rows(n), rows(n * k) if k else None)


def _grads(embedder) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}
    embedder.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize(
    ("loss", "kind", "texts_only"),
    [("infonce", "kl", False), ("none", "mse", False), ("none", "kl", True)],
    ids=["infonce+kl", "mse-alone", "text-only-kl"],
)
def test_gradcache_gives_the_plain_path_gradients_with_distillation(
    tiny_llama, triplets_csv, loss, kind, texts_only
):
    """Mini-batches of 3 texts against one graph over the batch: the same loss and LoRA
    gradients; the distillation term goes through GradCache's cached-embedding path."""
    config = TrainConfig.from_flat(
        model=str(tiny_llama), output="unused", dtype="fp32", lora_dropout=0.0, loss=loss,
        teacher="unused-teacher", distill_loss=kind, distill_weight=0.7,
    )  # fmt: skip
    embedder = random_lora_embedder(config)
    lines = triplets_csv.read_text().splitlines()[1:8]
    anchors, positives, negatives = (
        list(c) for c in zip(*(r.split(",") for r in lines), strict=True)
    )
    if texts_only:
        batch, teacher = (
            (anchors, None, None),
            _teacher_rows(len(anchors), 0)._replace(positives=None),
        )
    else:
        batch, teacher = (anchors, positives, negatives), _teacher_rows(len(anchors), 1)
    loss_fn = build_training_loss(config)

    def step(mini_batch):
        value = forward_backward(embedder, loss_fn, batch, Distributed(), [len(anchors)],
                                 mini_batch, teacher)  # fmt: skip
        return value.item(), _grads(embedder)

    ref_loss, ref_grads = step(None)
    loss_value, grads = step(3)
    assert loss_value == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
    for key, ref in ref_grads.items():
        scale = ref.abs().max().item()
        torch.testing.assert_close(grads[key], ref, rtol=1e-5, atol=1e-5 * scale, msg=key)
    assert all(g.abs().max() > 1e-6 for g in ref_grads.values()), "a LoRA gradient is ~zero"


WORLD = 2
# name: (loss, distill kind, GradCache mini-batch, text-only); global batches of 5 (3 + 2)
CASES = {
    "infonce-kl": ("infonce", "kl", None, False),
    "infonce-kl-gradcache": ("infonce", "kl", 2, False),
    "symmetric-mse": ("symmetric-infonce", "mse", None, False),
    "texts-kl": ("none", "kl", None, True),
    "texts-mse-gradcache": ("none", "mse", 2, True),
}


def one_step(student, teacher, data_path, ctx: Distributed, case: str):
    """Loss and averaged LoRA gradients of one step with distillation on one global batch."""
    loss_name, kind, mini_batch, texts_only = CASES[case]
    config = TrainConfig.from_flat(
        model=str(student), output="unused", dtype="fp32", lora_dropout=0.0, loss=loss_name,
        teacher=str(teacher), distill_loss=kind, teacher_batch_size=1,
    )  # fmt: skip
    embedder = random_lora_embedder(config)
    every = [line.split(",") for line in data_path.read_text().splitlines()[1:]]

    def batch(rows: list[list[str]]) -> Batch:
        if texts_only:
            return Batch([r[0] for r in rows], None, [[] for _ in rows], "t")
        return Batch([r[0] for r in rows], [r[1] for r in rows], [[r[2]] for r in rows], "t")

    # The cache holds the file's texts (several fill groups: each rank fills some).
    teacher_vectors = prepare_teacher(config.distill, [batch_texts(batch(every), True)], ctx)
    full = batch([every[i] for i in (9, 3, 17, 21, 11)])
    local, sizes = ctx.shard(full)
    texts = batch_texts(local, True)
    loss_fn = build_training_loss(config)
    rows_of_teacher = teacher_vectors.rows(texts, ctx.device)
    loss = forward_backward(embedder, loss_fn, texts, ctx, sizes, mini_batch, rows_of_teacher)
    value = mean_across(loss, ctx)
    trainable = [p for p in embedder.parameters() if p.requires_grad]
    average_gradients(trainable, ctx)
    return value, {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}


def _worker(rank, port, student, teacher, data_path, cache, root):
    os.environ["LMEMBED_CACHE"] = str(cache)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    ctx = Distributed(rank, WORLD)
    for case in CASES:
        torch.save(one_step(student, teacher, data_path, ctx, case), root / f"{case}-{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_steps(tiny_llama, wide_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-distributed")
    data_path = root / "triplets.csv"
    rows = ["sent0,sent1,hard_neg"]
    for i in range(24):
        s, a, other = SUBJECTS[i % 6], ACTIONS[i % 5], ACTIONS[(i + 2) % 5]
        rows.append(f"{s} {a} near car {i} .,{s} {a} .,{s} {other} inside .")
    data_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cache = root / "cache"
    args = (_free_port(), tiny_llama, wide_teacher, data_path, cache, root)
    mp.spawn(_worker, args=args, nprocs=WORLD)
    return root, data_path, cache


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_match_one_process_with_distillation(
    two_process_steps, tiny_llama, wide_teacher, monkeypatch, case
):
    """2 gloo ranks (3 + 2 examples; the teacher cache filled by both) give
    the loss and LoRA gradients of one process holding the whole batch: the teacher's rows
    are gathered like the student's (text-only: every text is every anchor's candidate)."""
    root, data_path, cache = two_process_steps
    monkeypatch.setenv("LMEMBED_CACHE", str(cache))
    loss, grads = one_step(tiny_llama, wide_teacher, data_path, Distributed(), case)
    for rank in range(WORLD):
        rank_loss, rank_grads = torch.load(root / f"{case}-{rank}.pt")
        assert rank_loss == pytest.approx(loss, abs=1e-5)
        assert rank_grads.keys() == grads.keys()
        for key in grads:
            torch.testing.assert_close(rank_grads[key], grads[key], rtol=0, atol=1e-5, msg=key)
    assert all(g.abs().max() > 1e-5 for g in grads.values()), "a gradient is ~zero"


# --- resume -------------------------------------------------------------------------------


def test_crash_then_resume_is_bit_identical_with_distillation(
    tiny_llama, wide_teacher, triplets_csv, tmp_path, monkeypatch
):
    straight = _config(tiny_llama, triplets_csv, tmp_path / "straight", wide_teacher)
    train(straight)
    interrupted = straight.replace(output=str(tmp_path / "resumed"))
    original = trainer_module.forward_backward
    calls = [0]

    def crash_at_step_4(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "forward_backward", crash_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            train(interrupted)
    train(interrupted.replace(resume=True))
    assert _adapter(tmp_path / "resumed") == _adapter(tmp_path / "straight")
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed" / "log.jsonl")]
    assert steps == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="distill_weight: 1.0 -> 0.5"):
        train(interrupted.replace(resume=True, distill_weight=0.5, steps=4))


@pytest.mark.slow
def test_sigkill_mid_fill_then_resume_is_bit_identical(
    tiny_llama, wide_teacher, triplets_csv, tmp_path, monkeypatch
):
    """A real ``lmembed train`` SIGKILLed between a cache part's vectors and its keys, with
    a cache of its own; ``--resume`` embeds the rest and ends on the adapter of a run whose
    cache was filled in one go."""
    straight = _config(tiny_llama, triplets_csv, tmp_path / "straight", wide_teacher)
    train(straight)
    flags = [f"--{k.replace('_', '-')}={v[0] if isinstance(v, list) else v}"
             for k, v in straight.replace(output=str(tmp_path / "killed")).to_dict().items()
             if k in ("model", "data", "output", "teacher", "steps", "batch_size", "lr", "warmup",
                      "dtype", "save_every", "seed", "teacher_batch_size")]  # fmt: skip
    command = [sys.executable, "-m", "lmembed", "train", *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "LMEMBED_CACHE": str(tmp_path / "own-cache"),
           "LMEMBED_FAULT": "teacher_write:2"}  # fmt: skip
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    parts = list((tmp_path / "own-cache" / "teacher").glob("*/part-*"))
    assert sorted(p.name.endswith(".keys.npy") for p in parts) == [False, False, True]
    env.pop("LMEMBED_FAULT")
    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert _adapter(tmp_path / "killed") == _adapter(tmp_path / "straight")


# --- data ---------------------------------------------------------------------------------


def test_text_only_data_trains_by_distillation_alone(tiny_llama, wide_teacher, tmp_path):
    """One text column, --loss none: each text against the batch's others; the KL to the
    teacher falls over the epochs (each epoch sees every text once)."""
    data = _texts_csv(tmp_path / "texts.csv", n=32)
    config = _config(tiny_llama, data, tmp_path / "run", wide_teacher, loss="none",
                     steps=40, lr=5e-3, save_every=0, lora_dropout=0.0)  # fmt: skip
    train(config)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "log.jsonl")]
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.7 * first, (first, last)
    layout = json.loads((tmp_path / "run" / "data.json").read_text())["datasets"][0]["layout"]
    assert "texts only" in layout


def test_text_only_data_needs_a_teacher_and_no_contrastive_loss(tiny_llama, wide_teacher, tmp_path):
    data = _texts_csv(tmp_path / "texts.csv")
    with pytest.raises(DataError, match="one text column .*--teacher MODEL --loss none"):
        train(_config(tiny_llama, data, tmp_path / "a", wide_teacher))
    with pytest.raises(ValueError, match="--loss none trains by distillation alone"):
        TrainConfig.from_flat(model=str(tiny_llama), data=str(data), loss="none")


def _write_layout(path: Path, layout: str) -> Path:
    rows = [(f"{SUBJECTS[i % 6]} {ACTIONS[i % 5]} {i} .", f"{SUBJECTS[i % 6]} {i} .",
             [f"{SUBJECTS[(i + 1) % 6]} {ACTIONS[(i + 2) % 5]} .", f"nothing {i} ."])
            for i in range(16)]  # fmt: skip
    if layout == "pairs":
        lines = ["anchor,positive"] + [f"{a},{p}" for a, p, _ in rows]
    elif layout == "triplets":
        lines = ["sent0,sent1,hard_neg"] + [f"{a},{p},{n[0]}" for a, p, n in rows]
    elif layout == "k-negatives":
        lines = [json.dumps({"query": a, "pos": [p], "neg": n}) for a, p, n in rows]
    else:
        lines = ["text"] + [a for a, _, _ in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("layout", ["pairs", "triplets", "k-negatives", "texts"])
def test_every_layout_distils(tiny_llama, wide_teacher, tmp_path, layout):
    """Each layout's texts, and only those, are embedded once by the teacher, and the run
    trains on them (contrastive + distillation; text-only: distillation alone)."""
    suffix = "jsonl" if layout == "k-negatives" else "csv"
    data = _write_layout(tmp_path / f"data.{suffix}", layout)
    loss = "none" if layout == "texts" else "infonce"
    config = _config(tiny_llama, data, tmp_path / "run", wide_teacher, loss=loss, steps=2,
                     batch_size=4, save_every=0)  # fmt: skip
    result = train(config)
    assert np.isfinite(result.final_loss)
    loaded = load_training_data(config.dataset, texts=layout == "texts")
    expected = set()
    for step in range(2):
        for part in batch_texts(loaded.batch(step, 4, 0), True):
            expected |= set(part or ())
    summary = json.loads((tmp_path / "run" / "teacher.json").read_text())
    assert summary["texts"] == len(expected) == summary["computed"]
    # 8 examples: anchors, positives and negatives all distinct (texts: the anchors only)
    assert len(expected) == {"pairs": 16, "triplets": 24, "k-negatives": 32, "texts": 8}[layout]


# --- the teacher: an lmembed adapter, a sentence-transformers folder -------------------------


def test_a_trained_adapter_is_a_teacher_with_its_own_prompts_and_pooling(
    tiny_llama, tiny_models, triplets_csv, tmp_path
):
    """The use case on tiny models: a trained adapter (prompt, mean pooling) given as
    --teacher is resolved with its saved spec, and the cached vectors are that embedder's
    (queries prompted as queries); a student of another architecture learns from it."""
    big = TrainConfig.from_flat(
        model=str(tiny_llama), data=str(triplets_csv), output=str(tmp_path / "big"), steps=2,
        batch_size=8, lr=1e-3, warmup=1, dtype="fp32", save_every=0, pooling="mean",
        query_prompt="query: {s}", document_prompt="{s}",
    )  # fmt: skip
    train(big)
    student = _config(tiny_models["qwen2"], triplets_csv, tmp_path / "small", tmp_path / "big",
                      steps=2, save_every=0)  # fmt: skip
    spec = teacher_spec(student.distill)
    assert spec.adapter == str(tmp_path / "big") and spec.model == str(tiny_llama)
    assert (spec.pooling, spec.query_prompt) == ("mean", "query: {s}")
    train(student)
    reference = Embedder.from_pretrained(adapter=tmp_path / "big")
    anchor = load_training_data(student.dataset).batch(0, 8, 0).anchors[0]
    cache = TeacherCache(cache_folder(spec))
    stored = cache.lookup([text_key("query: {s}", anchor)])
    np.testing.assert_allclose(stored, reference.encode([anchor], role="query"), atol=1e-5)
    assert (tmp_path / "small" / "adapter_model.safetensors").is_file()


def test_packaged_sentence_transformers_teacher_resolves_as_eval_does():
    """``all-minilm-l6-v2`` (a sentence-transformers folder): mean pooling, 256 tokens."""
    spec = teacher_spec(DistillOptions(teacher="all-minilm-l6-v2"))
    assert (spec.model, spec.pooling, spec.max_length) == ("all-minilm-l6-v2", "mean", 256)
    assert spec.dtype == resolve_dtype("auto")  # as lmembed eval, unless --teacher-dtype
    half = DistillOptions(teacher="all-minilm-l6-v2", teacher_dtype="fp16")
    assert teacher_spec(half).dtype == "fp16"
    with pytest.raises(ValueError, match="teacher_dtype"):
        DistillOptions(teacher="all-minilm-l6-v2", teacher_dtype="int4")


@pytest.mark.integration
def test_minilm_teacher_vectors_are_sentence_transformers_own(tmp_path):
    """The packaged MiniLM as an fp32 teacher embeds as sentence-transformers does."""
    from sentence_transformers import SentenceTransformer

    folder = require_packaged_model("all-minilm-l6-v2")
    texts = ["A man is playing a guitar.", "A woman is slicing an onion.", "The cat sleeps."]
    options = DistillOptions(teacher="all-minilm-l6-v2", teacher_dtype="fp32")
    teacher = prepare_teacher(options, [(texts[:1], texts[1:2], texts[2:])], Distributed())
    ours = teacher.rows((texts[:1], texts[1:2], texts[2:]), torch.device("cpu"))
    ours = torch.nn.functional.normalize(torch.cat(list(ours[:3])), dim=-1).numpy()
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# --- options ------------------------------------------------------------------------------


def test_bad_distillation_options_are_refused(tiny_llama):
    base = dict(model=str(tiny_llama), teacher="t")
    with pytest.raises(ValueError, match="distill_weight must be positive"):
        TrainConfig.from_flat(**base, distill_weight=0)
    with pytest.raises(ValueError, match="teacher_temperature must be positive"):
        TrainConfig.from_flat(**base, teacher_temperature=-1)
    with pytest.raises(ValueError, match="--temperature-lr needs an infonce loss, not none"):
        TrainConfig.from_flat(**base, loss="none", temperature_lr=0.01)
    with pytest.raises(ValueError, match="--matryoshka-dims .*--loss none"):
        TrainConfig.from_flat(**base, loss="none", matryoshka_dims=[16])
    with pytest.raises(ValueError, match="distill_loss must be one of"):
        TrainConfig.from_flat(**base, distill_loss="cosine")


def test_the_distill_recipe_is_the_best_cpu_recipe_plus_a_teacher():
    """The teacher arm of ablations/cpu-distill.yaml: the 30-minute recipe, a teacher in
    fp32, and 2 steps fewer, the time of the teacher's encoding."""
    configs = Path(__file__).parents[2] / "configs"
    best = load_config(configs / "gemma-3-270m-cpu-best.yaml").to_dict()
    distill = load_config(configs / "gemma-3-270m-cpu-distill.yaml").to_dict()
    changed = {key for key in best if best[key] != distill[key]}
    assert changed == {"teacher", "teacher_dtype", "steps"}
    assert (distill["teacher"], distill["teacher_dtype"]) == ("all-minilm-l6-v2", "fp32")
    assert distill["steps"] == best["steps"] - 2
    assert distill["loss"] == "infonce"  # contrastive + distillation


def test_text_only_layouts_are_detected_and_mixing_them_with_pairs_is_refused(tmp_path):
    for found, mapping, column in [(["sentence"], {}, "sentence"),
                                   (["id", "text"], {}, "text"),
                                   (["id", "body"], {"anchor": "body"}, "body")]:  # fmt: skip
        layout = resolve_layout(found, mapping, "t.csv", texts=True)
        assert (layout.anchor, layout.positive, layout.columns) == (column, None, (column,))
        with pytest.raises(DataError, match=f"one text column \\({column}\\)"):
            resolve_layout(found, mapping, "t.csv")
    folder = tmp_path / "mixed"
    folder.mkdir()
    _write_layout(folder / "a.csv", "pairs")
    _write_layout(folder / "b.csv", "texts")
    options = DataOptions(data=[str(folder)])
    with pytest.raises(DataError, match="separate --data items"):
        load_training_data(options, texts=True)
