"""The training loop. It should read top to bottom like nanoGPT's."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from lmembed.data.triplets import Triplets, load_triplets
from lmembed.losses import build_loss
from lmembed.model.embedder import Embedder
from lmembed.model.loading import load_backbone
from lmembed.model.lora import attach_lora, load_adapter
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
from lmembed.training.gradcache import grad_cache_backward
from lmembed.training.run_dir import MetricsLog, RunDir
from lmembed.training.sampler import batch_indices, steps_per_epoch

logger = logging.getLogger("lmembed")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last checkpoint on disk is left untouched."""


@dataclass
class TrainResult:
    output: Path
    steps: int
    final_loss: float
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_embedder(config: TrainConfig) -> Embedder:
    """Backbone + trainable LoRA (new, or continued from ``adapter``) + the spec to save."""
    spec = config.embedding
    backbone, tokenizer = load_backbone(spec.model, spec.dtype, spec.trust_remote_code)
    if spec.adapter is not None:
        backbone = load_adapter(backbone, spec.adapter, trainable=True)
    else:
        backbone = attach_lora(backbone, config.lora)
    return Embedder(backbone, tokenizer, spec)


def total_steps(config: TrainConfig, n_examples: int) -> int:
    if config.epochs is not None:
        return math.ceil(config.epochs * steps_per_epoch(n_examples, config.batch_size))
    return int(config.steps)


def triplet_batch(
    data: Triplets, indices: list[int], hard_negatives: bool
) -> tuple[list[str], list[str], list[str] | None]:
    """The texts of a batch; the one place where ``hard_negatives`` drops the negatives."""
    return (
        [data.anchors[i] for i in indices],
        [data.positives[i] for i in indices],
        [data.negatives[i] for i in indices] if hard_negatives else None,
    )


def forward_backward(
    embedder: Embedder,
    loss_fn: Callable[..., torch.Tensor],
    batch: tuple[list[str], list[str], list[str] | None],
    job: Distributed,
    sizes: list[int],
    mini_batch_size: int | None = None,
) -> torch.Tensor:
    """Embed this rank's examples, score them against the global batch, backpropagate.

    Anchors get the query prompt, positives and negatives the document prompt; all
    texts then go through one length-sorted pass and are split back into roles.
    With ``mini_batch_size`` the pass runs as GradCache. Returns this rank's
    (detached) objective; see ``distributed.global_batch_loss``.
    """
    anchors, positives, negatives = batch
    ids = embedder.tokenize(anchors, role="query") + embedder.tokenize(
        positives + (negatives or []), role="document"
    )
    n = len(anchors)

    def objective(vectors: torch.Tensor) -> torch.Tensor:
        hard = vectors[2 * n :] if negatives else None
        return global_batch_loss(loss_fn, vectors[:n], vectors[n : 2 * n], hard, job, sizes)

    if mini_batch_size:
        return grad_cache_backward(embedder, ids, objective, mini_batch_size)
    loss = objective(embedder.embed_ids(ids, chunk_size=n))
    loss.backward()
    return loss.detach()


def train(config: TrainConfig, data: Triplets | None = None) -> TrainResult:
    """Fine-tune ``config.embedding.model``; the adapter lands in ``config.output``.

    Under ``torchrun`` every process trains on its shard of each global batch
    against the negatives of all processes; rank 0 alone logs and writes.
    """
    with process_group() as job:
        return _train(config, data, job)


def _load_data(config: TrainConfig) -> Triplets:
    if len(config.data) != 1:
        raise ValueError(f"give one training data source (--data), got {config.data}")
    return load_triplets(config.data[0], limit=config.limit)


def _train(config: TrainConfig, data: Triplets | None, job: Distributed) -> TrainResult:
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
    data = data if data is not None else _load_data(config)
    n_steps = total_steps(config, len(data))
    check_sharding(config.batch_size, len(data), n_steps, job.world_size)
    embedder = build_embedder(config).to(job.device)
    seed_dropout(config.seed, job)
    loss_fn = build_loss(config.loss, config.temperature, config.margin)
    trainable = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup, n_steps), n_steps)
    state = TrainingState(embedder.model, optimizer, scheduler, config.to_dict())

    start = 0
    if config.resume and run.has_checkpoint():
        start = state.load(run.checkpoint, job.rank, job.world_size)
        logger.info("resuming %s at step %d", run.path, start)
    log = None
    if job.is_main:
        run.write_config(config.to_dict())
        log = MetricsLog(run.log, keep_until_step=start)

    embedder.train()
    loss_value = float("nan")
    began = time.perf_counter()
    bar = tqdm(
        range(start, n_steps),
        initial=start,
        total=n_steps,
        desc="train",
        unit="step",
        disable=not job.is_main,
    )
    for step in bar:
        tick = time.perf_counter()
        indices = batch_indices(len(data), config.batch_size, config.seed, step)
        local, sizes = job.shard(indices)
        batch = triplet_batch(data, local, config.hard_negatives)
        loss = forward_backward(embedder, loss_fn, batch, job, sizes, config.mini_batch_size)
        loss_value = mean_across(loss, job)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at step {step + 1}; stopped. The last checkpoint in "
                f"{run.checkpoint} is intact: lower --lr or check the data, then --resume."
            )
        average_gradients(trainable, job)
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        rate = len(indices) / (time.perf_counter() - tick)
        lr = scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", triplets_s=f"{rate:.1f}")
        if log is not None:
            log.write({"step": done, "loss": loss_value, "lr": lr, "triplets_per_s": rate})
        if config.save_every and done % config.save_every == 0 and done < n_steps:
            save_checkpoint_on_main(state, run.checkpoint, done, job)

    if job.is_main:
        embedder.save_adapter(run.path)
    save_checkpoint_on_main(state, run.checkpoint, n_steps, job)
    return TrainResult(run.path, n_steps, loss_value, time.perf_counter() - began)
