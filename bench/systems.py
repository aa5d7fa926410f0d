"""The three training systems the benchmarks compare, on identical batches and settings.

* ``lmembed``: ``lmembed.training.train`` as users call it.
* ``reference``: the paper's training code (trapoom555/Language-Model-STS-CFT,
  ``train/contrastive_trainer.py`` and ``data/nli_preprocess.py``) rewritten for one CPU
  process, as written: ``AutoModelForCausalLM`` with ``output_hidden_states=True`` (so the
  vocabulary logits are computed), each text tokenized up front and padded to
  ``max_length`` with no EOS appended (``pad_token = eos_token``; the tokenizer pads on the
  left, so position -1 is the text's last token), one forward pass per role (anchor,
  positive, negative), the hidden state at position -1, and InfoNCE normalised and scored in
  the embeddings' dtype (bf16, as under the HF Trainer's ``--bf16``). Its LoRA init is the
  paper's ``init_lora_weights="gaussian"``.
* ``reference+eos``: the same code with the two changes the method describes and lmembed
  makes: EOS appended to every text (so position -1 is EOS) and the loss in fp32.
* ``sentence-transformers``: ``SentenceTransformerTrainer`` with
  ``MultipleNegativesRankingLoss`` (scale 20 = 1/0.05) on (anchor, positive, negative)
  columns, a ``Transformer`` + ``Pooling("lasttoken")`` model on the same safetensors
  folder, LoRA through peft (``get_peft_model`` on its backbone), EOS appended by the
  tokenizer's post-processor (token ids checked against ``Embedder.tokenize``).

Shared by all: the batches (lmembed's sampler, so each system embeds the same texts),
base weights in the recipe's dtype (bf16, the paper's, unless a benchmark says otherwise)
with fp32 LoRA weights, LoRA 8/32/0.1 on q_proj/v_proj, AdamW (weight
decay 1e-4), cosine schedule with linear warmup, gradient clipping at 1.0. Each trainer
returns per-step seconds and losses and saves its LoRA weights under portable names
(``lora.safetensors``) so the quality benchmark scores them all through one ``Embedder``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lmembed.data.sampler import batch_indices
from lmembed.data.triplets import Triplets, load_triplets
from lmembed.model.embedder import Embedder
from lmembed.training.config import TrainConfig
from lmembed.training.run_dir import read_metrics

LORA_FILE = "lora.safetensors"
LORA_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class Recipe:
    """Everything a training run depends on; passed to worker processes as JSON."""

    data: str
    steps: int
    limit: int | None = None
    model: str = "gemma-3-270m"
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 10
    weight_decay: float = 1e-4
    temperature: float = 0.05
    seed: int = 42
    max_length: int = 128
    reference_max_length: int = 150
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    dtype: str = "bf16"  # the base weights' dtype for every system (the paper trains in bf16)

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self, output: str | Path = "") -> TrainConfig:
        """The equivalent ``lmembed train`` options."""
        return TrainConfig.from_flat(
            model=self.model, data=self.data, output=str(output), steps=self.steps,
            batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
            weight_decay=self.weight_decay, temperature=self.temperature, seed=self.seed,
            max_length=self.max_length, lora_r=self.lora_r, lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout, lora_targets=list(LORA_TARGETS), limit=self.limit,
            save_every=0, dtype=self.dtype,
        )  # fmt: skip

    def lora_config(self, **extra):
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            target_modules=list(LORA_TARGETS), bias="none", **extra,
        )  # fmt: skip


def step_batches(recipe: Recipe, data: Triplets) -> list[list[int]]:
    """The triplet indices of every step, exactly as ``lmembed train`` draws them."""
    return [
        batch_indices(len(data), recipe.batch_size, recipe.seed, step)
        for step in range(recipe.steps)
    ]


def portable_lora(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoRA tensors keyed from ``layers.`` on, without peft's adapter name.

    The three systems wrap the backbone differently (``base_model.model.model.layers...``,
    ``layers...lora_A.default.weight``); these keys are the same for all of them.
    """
    out = {}
    for name, tensor in named.items():
        if "lora_" in name:
            key = name[name.index("layers.") :].replace(".default", "")
            out[key] = tensor.detach().float().contiguous().cpu()
    if not out:
        raise ValueError("no LoRA weights found: was the adapter attached?")
    return out


def save_lora(named: dict[str, torch.Tensor], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    save_file(portable_lora(named), str(output / LORA_FILE))


def load_lora(module: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """Copy saved LoRA weights into ``module``, which must carry the same LoRA layers."""
    saved = load_file(str(folder / LORA_FILE))
    params = dict(module.named_parameters())
    targets = {key: params[name] for key, name in _portable_names(params).items()}
    if set(targets) != set(saved):
        missing = sorted(set(targets) ^ set(saved))[:4]
        raise ValueError(f"{folder / LORA_FILE}: LoRA weights do not match the model: {missing}")
    with torch.no_grad():
        for key, tensor in saved.items():
            targets[key].copy_(tensor)
    return module


def _portable_names(params: dict[str, torch.Tensor]) -> dict[str, str]:
    return {
        name[name.index("layers.") :].replace(".default", ""): name
        for name in params
        if "lora_" in name
    }


def _cosine_schedule(optimizer: torch.optim.Optimizer, recipe: Recipe):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(
        optimizer, min(recipe.warmup, recipe.steps), recipe.steps
    )


# --- lmembed --------------------------------------------------------------------------------


def train_lmembed(recipe: dict, output: str, data: Triplets | None = None) -> dict:
    """``lmembed.training.train``; step times are the ones it logs (tokenization included)."""

    from lmembed.training import train

    plan = Recipe(**recipe)
    folder = Path(output)
    train(plan.train_config(folder), data)
    log = read_metrics(folder / "log.jsonl")
    save_lora(load_file(str(folder / "adapter_model.safetensors")), folder)
    return {
        "step_s": [plan.batch_size / record["triplets_per_s"] for record in log],
        "losses": [record["loss"] for record in log],
    }


# --- the paper's recipe ---------------------------------------------------------------------


def reference_tokenize(
    tokenizer, texts: list[str], max_length: int, pad: bool = True, eos: bool = False
) -> dict:
    """Truncate, pad on the tokenizer's side (left) to ``max_length`` or the longest text;
    ``eos`` ends every text with EOS first (``reference+eos``)."""
    ids = tokenizer(texts, truncation=True, max_length=max_length - eos)["input_ids"]
    if eos:
        ids = [row + [tokenizer.eos_token_id] for row in ids]
    padding = {"padding": "max_length", "max_length": max_length} if pad else {"padding": True}
    return tokenizer.pad({"input_ids": ids}, return_tensors="pt", **padding)


def paper_info_nce(
    anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The paper's loss as its code computes it: normalise, score and take the cross-entropy
    in the embeddings' own dtype (bf16 there), where ``lmembed.losses.info_nce`` uses fp32."""
    unit = [F.normalize(x, dim=-1) for x in (anchors, positives, negatives)]
    anchors, positives, negatives = unit
    logits = torch.cat((anchors @ positives.T, anchors @ negatives.T), dim=1)
    labels = torch.arange(len(anchors), device=anchors.device)
    return F.cross_entropy(logits / temperature, labels)


def reference_model(plan: Recipe):
    """``AutoModelForCausalLM`` in the recipe's dtype (the paper: bf16) with the paper's LoRA
    (gaussian init) and tokenizer."""
    from peft import TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmembed.model.loading import resolve
    from lmembed.model.spec import DTYPES

    folder = resolve(plan.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.padding_side != "left":
        raise ValueError(f"{folder}: the reference recipe needs a left-padding tokenizer")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[plan.dtype])
    config = plan.lora_config(init_lora_weights="gaussian", task_type=TaskType.CAUSAL_LM)
    return get_peft_model(model, config), tokenizer


def reference_embed(model, batch: dict, logits: bool = True) -> torch.Tensor:
    """The paper's ``encode``: last layer's hidden state at position -1.

    ``logits=False`` runs the decoder without the LM head (the quality run's cost cut):
    ``hidden_states[-1]`` is the decoder's final, normed output either way.
    ``logits_to_keep=1`` would be the obvious cut, but on CPU its [32, 1, 640] x
    [640, 262144] bf16 product is ~5x slower than all the logits.
    """
    if not logits:
        return model.get_base_model().get_decoder()(**batch).last_hidden_state[:, -1, :]
    return model(**batch, output_hidden_states=True).hidden_states[-1][:, -1, :]


def train_reference(recipe: dict, output: str, pad_to_max: bool = True, eos: bool = False) -> dict:
    """The paper's training step. ``pad_to_max=False``: pad each role to its longest text and
    skip the LM head, the same embeddings at a fraction of the cost (quality runs).
    ``eos``: the ``reference+eos`` variant (EOS appended, loss in fp32)."""
    from lmembed.losses import info_nce

    loss_fn = info_nce if eos else paper_info_nce
    plan = Recipe(**recipe)
    torch.manual_seed(plan.seed)
    model, tokenizer = reference_model(plan)
    data = load_triplets(plan.data, limit=plan.limit)
    batches = step_batches(plan, data)
    used = sorted({i for batch in batches for i in batch})
    roles = (data.anchors, data.positives, data.negatives)
    # The paper tokenizes and pads the whole dataset once, before training.
    tokenized = []
    if pad_to_max:
        for texts in roles:
            rows = [texts[i] for i in used]
            encoded = reference_tokenize(tokenizer, rows, plan.reference_max_length, eos=eos)
            tokenized.append({i: (encoded["input_ids"][k], encoded["attention_mask"][k])
                              for k, i in enumerate(used)})  # fmt: skip

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=plan.lr, weight_decay=plan.weight_decay)
    scheduler = _cosine_schedule(optimizer, plan)
    model.train()
    step_s, losses = [], []
    for batch in batches:
        tick = time.perf_counter()
        vectors = []
        for role, texts in enumerate(roles):
            if pad_to_max:
                rows = [tokenized[role][i] for i in batch]
                inputs = {"input_ids": torch.stack([r[0] for r in rows]),
                          "attention_mask": torch.stack([r[1] for r in rows])}  # fmt: skip
            else:
                inputs = reference_tokenize(
                    tokenizer, [texts[i] for i in batch], plan.reference_max_length, False, eos
                )
            vectors.append(reference_embed(model, inputs, logits=pad_to_max))
        loss = loss_fn(*vectors, temperature=plan.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step_s.append(time.perf_counter() - tick)
    save_lora(dict(model.named_parameters()), Path(output))
    return {"step_s": step_s, "losses": losses}


# --- sentence-transformers ------------------------------------------------------------------


def append_eos(tokenizer) -> None:
    """Make the fast tokenizer end every text with EOS (after BOS and the text), kept when
    truncating: tokenizers counts post-processor tokens against ``max_length``."""
    from tokenizers import processors

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {bos} $B {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )


def st_model(plan: Recipe, lora: bool = True):
    """Transformer + last-token pooling on lmembed's safetensors folder, EOS appended."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    from lmembed.model.loading import resolve
    from lmembed.model.spec import DTYPES

    transformer = Transformer(
        str(resolve(plan.model)),
        model_kwargs={"dtype": DTYPES[plan.dtype]},
        max_seq_length=plan.max_length,
    )
    append_eos(transformer.tokenizer)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    if lora:
        # transformers' own ``add_adapter`` wants peft >= 0.22 (the project pins 0.21), so
        # wrap the backbone with peft directly, as sentence-transformers' docs also show.
        from peft import get_peft_model

        transformer.model = get_peft_model(transformer.model, plan.lora_config())
    return model


def check_same_tokens(model, plan: Recipe, texts: list[str]) -> None:
    """sentence-transformers must feed the model exactly the ids ``Embedder`` would."""
    from transformers import AutoTokenizer

    from lmembed.model.embedder import EmbeddingSpec
    from lmembed.model.loading import resolve

    spec = EmbeddingSpec(model=plan.model, max_length=plan.max_length)
    embedder = Embedder(None, AutoTokenizer.from_pretrained(resolve(plan.model)), spec)
    expected = embedder.tokenize(texts)
    got = model.tokenizer(texts, truncation=True, max_length=plan.max_length)["input_ids"]
    if got != expected:
        raise AssertionError("sentence-transformers tokens differ from Embedder.tokenize")


def train_sentence_transformers(recipe: dict, output: str) -> dict:
    """``SentenceTransformerTrainer``; a step's time runs from one step end to the next, so
    it includes data loading and tokenization, like lmembed's."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    plan = Recipe(**recipe)
    torch.manual_seed(plan.seed)
    model = st_model(plan)
    data = load_triplets(plan.data, limit=plan.limit)
    order = [i for batch in step_batches(plan, data) for i in batch]
    check_same_tokens(model, plan, [data.anchors[i] for i in order[:64]])
    dataset = Dataset.from_dict({
        "anchor": [data.anchors[i] for i in order],
        "positive": [data.positives[i] for i in order],
        "negative": [data.negatives[i] for i in order],
    })  # fmt: skip

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.losses: list[float] = []

        def on_train_begin(self, *args, **kwargs) -> None:
            self.marks = [time.perf_counter()]

        def on_step_end(self, *args, **kwargs) -> None:
            self.marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(output) / "trainer"), max_steps=plan.steps,
        per_device_train_batch_size=plan.batch_size, learning_rate=plan.lr,
        warmup_steps=plan.warmup, lr_scheduler_type="cosine", weight_decay=plan.weight_decay,
        max_grad_norm=1.0, optim="adamw_torch", seed=plan.seed, data_seed=plan.seed,
        batch_sampler=_in_order, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
    )  # fmt: skip
    timer = Timer()
    loss = MultipleNegativesRankingLoss(model, scale=1 / plan.temperature)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[timer]
    )
    trainer.train()
    save_lora(dict(model.named_parameters()), Path(output))
    steps = [end - start for start, end in zip(timer.marks, timer.marks[1:], strict=False)]
    return {"step_s": steps, "losses": timer.losses}


def _in_order(dataset, **kwargs):
    """Batches in dataset order: the dataset is already laid out in lmembed's batch order."""
    from sentence_transformers import DefaultBatchSampler
    from torch.utils.data import SequentialSampler

    return DefaultBatchSampler(SequentialSampler(dataset), **kwargs)


TRAINERS = {
    "lmembed": train_lmembed,
    "reference": train_reference,
    "reference+eos": partial(train_reference, eos=True),
    "sentence-transformers": train_sentence_transformers,
}
