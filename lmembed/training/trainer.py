"""The training loop. It should read top to bottom like nanoGPT's."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from lmembed.data.training import Batch, TrainingData, load_training_data
from lmembed.faults import fault_point
from lmembed.io import atomic_write_json
from lmembed.losses import (
    DistillationLoss,
    InfoNCELoss,
    TeacherRows,
    WithDistillation,
    build_loss,
)
from lmembed.model.embedder import Embedder
from lmembed.model.loading import load_backbone
from lmembed.model.lora import attach_lora, load_adapter
from lmembed.model_card import write_card
from lmembed.system import accelerator, return_freed_memory
from lmembed.training.averaging import ExponentialAverage
from lmembed.training.checkpoint import TrainingState
from lmembed.training.config import TrainConfig
from lmembed.training.distributed import (
    Distributed,
    average_gradients,
    check_sharding,
    global_batch_loss,
    mean_across,
    process_group,
    save_checkpoint_on_main,
    seed_dropout,
)
from lmembed.training.evaluator import Scorer
from lmembed.training.gradcache import grad_cache_backward
from lmembed.training.monitor import RunMonitor
from lmembed.training.report import write_run_report
from lmembed.training.run_dir import RunDir
from lmembed.training.teacher import BatchTexts, Teacher, batch_roles, prepare_teacher

logger = logging.getLogger("lmembed")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last checkpoint on disk is left untouched."""


@dataclass
class TrainResult:
    """``seconds`` is training time, the teacher's vectors included (``teacher_seconds`` of
    it: resolving, walking the data, embedding what the cache lacked); time spent
    evaluating is ``eval_seconds``, apart."""

    output: Path
    steps: int
    final_loss: float
    seconds: float
    eval_seconds: float = 0.0
    best: dict[str, Any] | None = None
    last_scores: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    teacher_seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_embedder(config: TrainConfig) -> Embedder:
    """Backbone + trainable LoRA (new, or continued from ``adapter``) + the spec to save,
    with the config's attention kernel, activation checkpointing and ``--compile``."""
    spec = config.embedding
    backbone, tokenizer = load_backbone(spec.model, spec.dtype, spec.trust_remote_code)
    if kernel := attention_kernel(config):
        backbone.set_attn_implementation(kernel)
    if spec.adapter is not None:
        backbone = load_adapter(backbone, spec.adapter, trainable=True)
    else:
        backbone = attach_lora(backbone, config.lora)
    if config.activation_checkpointing:
        # Non-reentrant checkpointing restores the RNG state, so LoRA dropout draws the
        # same masks when a layer is recomputed: the gradients do not change.
        backbone.get_base_model().activation_checkpointing_enable(
            {"use_reentrant": False}, every_n_layers=config.activation_checkpointing
        )
    embedder = Embedder(backbone, tokenizer, spec)
    if config.compile:
        compile_backbone(embedder)
    return embedder


def attention_kernel(config: TrainConfig) -> str | None:
    """``--attn-implementation``; auto: eager for bf16 on a CPU, where it won the paired
    step benchmark (short texts: the attention matrices are small), else ``None``: the
    kernel transformers loaded (sdpa where the model has it)."""
    if config.attn_implementation != "auto":
        return config.attn_implementation
    return "eager" if accelerator() is None and config.embedding.dtype == "bf16" else None


def compile_backbone(embedder: Embedder) -> None:
    """``torch.compile`` the backbone in place (dynamic shapes: texts vary in length), so the
    elementwise kernels between its matmuls fuse; weights and state-dict keys stay as they
    are, so checkpoints and the saved adapter do not change. ``embedder.model`` is the peft
    model ``build_embedder`` made."""
    embedder.model.get_base_model().compile(dynamic=True)


def save_adapters(
    embedder: Embedder, run: RunDir, average: ExponentialAverage | None, keep_best: bool
) -> None:
    """The trained adapter; with weight averaging, the average there and the last step's
    weights in ``last-step/`` (so one run gives both to compare on a dev set). With
    ``--keep-best`` the folder already holds the best step's and the final one goes to
    ``last/``. Every adapter folder gets a model card; the run's (its recipe and scores)
    goes with the folder's own adapter, the others' describe the embedding alone."""
    final = run.last if keep_best else run.path
    if average is not None:
        embedder.save_adapter(run.last_step)
        write_card(run.last_step, embedder.spec)
    with average.applied() if average is not None else nullcontext():
        embedder.save_adapter(final)
    write_card(run.path, embedder.spec, run.path)
    if keep_best:
        write_card(run.last, embedder.spec)


def build_optimizer(
    config: TrainConfig, trainable: list[torch.nn.Parameter], learned: list[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """AdamW on the LoRA weights; a learned temperature is a second group with its own
    learning rate and no weight decay (decay would pull it toward 1)."""
    groups: list[dict] = [{"params": trainable}]
    if learned:
        groups.append({"params": learned, "lr": config.temperature_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def total_steps(config: TrainConfig, data: TrainingData) -> int:
    if config.epochs is not None:
        return math.ceil(config.epochs * data.steps_per_epoch(config.batch_size))
    return int(config.steps)


def build_training_loss(config: TrainConfig) -> torch.nn.Module:
    """The contrastive loss the config names, plus the distillation term with a teacher
    (``--loss none``: that term alone)."""
    contrastive = None
    if config.loss != "none":
        contrastive = build_loss(
            config.loss,
            config.temperature,
            config.margin,
            config.embedding.matryoshka_dims,
            config.matryoshka_weights,
            learn_temperature=config.temperature_lr is not None,
        )
    if not config.distill.enabled:
        return contrastive
    options = config.distill
    term = DistillationLoss(options.distill_loss, config.temperature, options.teacher_temperature)
    return WithDistillation(contrastive, term, options.distill_weight)


def training_batches(config: TrainConfig, data: TrainingData, n_steps: int) -> Iterator[BatchTexts]:
    """The texts of every global batch the run trains on, step by step."""
    for step in range(n_steps):
        yield batch_texts(data.batch(step, config.batch_size, config.seed), config.hard_negatives)


def batch_texts(batch: Batch, hard_negatives: bool) -> BatchTexts:
    """(anchors, positives, negatives flattened per anchor); the one place where
    ``hard_negatives`` drops the negatives (pairs and text-only data have none;
    text-only data has no positives either)."""
    use = hard_negatives and batch.negatives_per_anchor > 0
    return batch.anchors, batch.positives, batch.flat_negatives() if use else None


def forward_backward(
    embedder: Embedder,
    loss_fn: Callable[..., torch.Tensor],
    batch: BatchTexts,
    job: Distributed,
    sizes: list[int],
    mini_batch_size: int | None = None,
    teacher: TeacherRows | None = None,
) -> torch.Tensor:
    """Embed this rank's examples, score them against the global batch, backpropagate.

    Anchors get the query prompt, positives and negatives the document prompt (text-only
    data: the plain prompt; ``teacher.batch_roles``); all texts then go through one
    length-sorted pass and are split back into roles. ``negatives`` holds the same number
    per anchor, anchor ``i``'s in a row. With ``mini_batch_size`` the pass runs as
    GradCache. ``teacher`` holds the teacher's rows of the same texts, for a distilling
    ``loss_fn``. Returns this rank's (detached) objective; see
    ``distributed.global_batch_loss``.
    """
    anchors, positives, negatives = batch
    ids: list[list[int]] = []
    for part, role in zip(batch, batch_roles(batch), strict=True):
        ids += embedder.tokenize(part, role) if part else []
    n = len(anchors)

    def objective(vectors: torch.Tensor) -> torch.Tensor:
        if positives is None:  # text-only: each text against the others
            return global_batch_loss(loss_fn, vectors, None, None, job, sizes, teacher)
        hard = vectors[2 * n :] if negatives else None
        student = (vectors[:n], vectors[n : 2 * n], hard)
        return global_batch_loss(loss_fn, *student, job, sizes, teacher)

    fault_point("forward")
    if mini_batch_size:
        return grad_cache_backward(embedder, ids, objective, mini_batch_size)
    loss = objective(embedder.embed_ids(ids, chunk_size=n))
    fault_point("backward")
    loss.backward()
    return loss.detach()


def train(
    config: TrainConfig, data: TrainingData | None = None, scorer: Scorer | None = None
) -> TrainResult:
    """Fine-tune ``config.embedding.model``; the adapter lands in ``config.output``.

    Under ``torchrun`` every process trains on its shard of each global batch
    against the negatives of all processes; rank 0 alone logs, evaluates and writes.
    ``scorer`` replaces the ``--eval-tasks`` evaluator (``{metric: score}`` of an embedder).
    """
    with process_group() as job:
        return _train(config, data, job, scorer)


def _train(
    config: TrainConfig, data: TrainingData | None, job: Distributed, scorer: Scorer | None
) -> TrainResult:
    if not config.output:
        raise ValueError("give an output folder (--output)")
    run = RunDir(config.output)
    if not config.resume and run.has_checkpoint():
        raise FileExistsError(
            f"{run.path} already holds a training run; pass --resume to continue it, "
            "or choose another --output"
        )
    run.path.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    if data is None:  # text-only data trains by distillation alone
        data = load_training_data(config.dataset, texts=config.loss == "none")
    if job.is_main:
        atomic_write_json(run.data_summary, data.log_summary(config.batch_size, config.seed))
    n_steps = total_steps(config, data)
    check_sharding(config.batch_size, [len(d) for d in data.datasets], n_steps, job.world_size)
    teacher = start_teacher(config, data, n_steps, run, job)
    embedder = build_embedder(config).to(job.device)
    seed_dropout(config.seed, job)
    # A learned temperature lives beside the LoRA weights.
    loss_fn = build_training_loss(config).to(job.device)
    trainable = [p for p in embedder.parameters() if p.requires_grad]
    learned = list(loss_fn.parameters())  # the temperature with --temperature-lr
    infonce = next((m for m in loss_fn.modules() if isinstance(m, InfoNCELoss)), None)
    optimizer = build_optimizer(config, trainable, learned)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup, n_steps), n_steps)
    average = ExponentialAverage(trainable, config.ema_decay) if config.ema_decay else None
    state = TrainingState(embedder.model, optimizer, scheduler, config.to_dict(), average, loss_fn)

    start = 0
    if config.resume and run.has_checkpoint():
        start = state.load(run.checkpoint, job.rank, job.world_size)
        logger.info("resuming %s at step %d", run.path, start)
    elif config.resume:
        first_save = config.save_every if 0 < config.save_every < n_steps else n_steps
        run.check_fresh_resume(first_save)
    if job.is_main:
        run.write_config(config.to_dict())
    monitor = RunMonitor(config, run, job, start, scorer)
    keep_best = config.evaluation.keep_best is not None

    embedder.train()
    loss_value = float("nan")
    began = time.perf_counter()
    if start == 0 and monitor.due(0, n_steps):
        monitor.evaluate(0, embedder, average)
    done = start
    bar = tqdm(
        range(start, n_steps if not monitor.stopped else start),
        initial=start,
        total=n_steps,
        desc="train",
        unit="step",
        disable=not job.is_main,
    )
    for step in bar:
        tick = time.perf_counter()
        batch = data.batch(step, config.batch_size, config.seed)
        local, sizes = job.shard(batch)
        texts = batch_texts(local, config.hard_negatives)
        rows = teacher.rows(texts, job.device) if teacher is not None else None
        loss = forward_backward(
            embedder, loss_fn, texts, job, sizes, config.mini_batch_size, teacher=rows
        )
        loss_value = mean_across(loss, job)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at step {step + 1}; stopped. The last checkpoint in "
                f"{run.checkpoint} is intact: lower --lr or check the data, then --resume."
            )
        average_gradients(trainable + learned, job)
        grad_norm = gradient_norm(trainable, config.max_grad_norm)
        optimizer.step()
        if average is not None:
            average.update()
        fault_point("optimizer_step")
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return_freed_memory()

        done = step + 1
        rate = len(batch) / (time.perf_counter() - tick)
        lr = scheduler.get_last_lr()[0]
        record = {"step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                  "triplets_per_s": rate}  # fmt: skip
        if infonce is not None:  # the InfoNCE loss's (Matryoshka may wrap it)
            record["temperature"] = float(infonce.temperature)
        monitor.log_step(record)
        stop = monitor.due(done, n_steps) and monitor.evaluate(done, embedder, average)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", triplets_s=f"{rate:.1f}",
                        **monitor.postfix_score())  # fmt: skip
        if stop:
            break
        if config.save_every and done % config.save_every == 0 and done < n_steps:
            save_checkpoint_on_main(state, run.checkpoint, done, job)
    bar.close()

    if job.is_main:
        save_adapters(embedder, run, average, keep_best)
        write_run_report(run)
    save_checkpoint_on_main(state, run.checkpoint, done, job)
    monitor.finish()
    teacher_seconds = teacher.seconds if teacher is not None else 0.0
    seconds = time.perf_counter() - began - monitor.eval_seconds + teacher_seconds
    return TrainResult(run.path, done, loss_value, seconds, monitor.eval_seconds,
                       monitor.best.summary(), monitor.last_scores, monitor.stopped,
                       teacher_seconds)  # fmt: skip


def start_teacher(
    config: TrainConfig, data: TrainingData, n_steps: int, run: RunDir, job: Distributed
) -> Teacher | None:
    """With ``--teacher``: its vectors for every text the run trains on, cached on disk
    before step 1 (``training.teacher``), and what that cost in ``OUTPUT/teacher.json``."""
    if not config.distill.enabled:
        return None
    teacher = prepare_teacher(config.distill, training_batches(config, data, n_steps), job)
    if job.is_main:
        atomic_write_json(run.path / "teacher.json", teacher.summary())
    return teacher


def gradient_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> float:
    """The gradients' total norm before clipping (clipped to ``max_norm`` when > 0)."""
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
    grads = [p.grad for p in parameters if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads))
