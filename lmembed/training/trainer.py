"""The training loop. It should read top to bottom like nanoGPT's."""

from __future__ import annotations

import json
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
from lmembed.io import atomic_write_text
from lmembed.losses import build_loss
from lmembed.model.embedder import Embedder, EmbeddingSpec
from lmembed.model.loading import load_backbone
from lmembed.model.lora import attach_lora, save_adapter
from lmembed.training.checkpoint import has_checkpoint, load_checkpoint
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
    """Backbone + LoRA + the embedding spec that will be saved with the adapter."""
    spec = EmbeddingSpec(
        model=config.model,
        prompt=config.prompt,
        pooling=config.pooling,
        max_length=config.max_length,
        dtype=config.dtype,
        trust_remote_code=config.trust_remote_code,
    )
    backbone, tokenizer = load_backbone(spec.model, spec.dtype, spec.trust_remote_code)
    backbone = attach_lora(
        backbone, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets
    )
    return Embedder(backbone, tokenizer, spec)


def total_steps(config: TrainConfig, n_examples: int) -> int:
    if config.epochs is not None:
        return math.ceil(config.epochs * steps_per_epoch(n_examples, config.batch_size))
    return int(config.steps)


def triplet_batch(data: Triplets, indices: list[int]) -> tuple[list[str], list[str], list[str]]:
    return (
        [data.anchors[i] for i in indices],
        [data.positives[i] for i in indices],
        [data.negatives[i] for i in indices],
    )


def forward_backward(
    embedder: Embedder,
    loss_fn: Callable[..., torch.Tensor],
    batch: tuple[list[str], list[str], list[str] | None],
    ctx: Distributed,
    sizes: list[int],
    mini_batch_size: int | None = None,
) -> torch.Tensor:
    """Embed this rank's triplets, score them against the global batch, backpropagate.

    All texts go through one length-sorted pass and are split back into roles.
    With ``mini_batch_size`` the pass runs as GradCache. Returns this rank's
    (detached) objective; see ``distributed.global_batch_loss``.
    """
    anchors, positives, negatives = batch
    texts = anchors + positives + (negatives or [])
    n = len(anchors)

    def objective(vectors: torch.Tensor) -> torch.Tensor:
        hard = vectors[2 * n :] if negatives else None
        return global_batch_loss(loss_fn, vectors[:n], vectors[n : 2 * n], hard, ctx, sizes)

    if mini_batch_size:
        return grad_cache_backward(embedder, texts, objective, mini_batch_size)
    loss = objective(embedder.embed(texts, chunk_size=n))
    loss.backward()
    return loss.detach()


class MetricsLog:
    """Append-only JSONL of per-step metrics; on resume, later lines are dropped."""

    def __init__(self, path: Path, keep_until_step: int) -> None:
        self.path = path
        if path.exists():
            kept = [r for r in read_metrics(path) if r["step"] <= keep_until_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The per-step records of a ``log.jsonl`` (empty when training has not started)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line]


def train(config: TrainConfig, data: Triplets | None = None) -> TrainResult:
    """Fine-tune ``config.model`` on NLI triplets; the adapter lands in ``config.output``.

    Under ``torchrun`` every process trains on its shard of each global batch
    against the negatives of all processes; rank 0 alone logs and writes.
    """
    with process_group() as ctx:
        return _train(config, data, ctx)


def _train(config: TrainConfig, data: Triplets | None, ctx: Distributed) -> TrainResult:
    if not config.output:
        raise ValueError("give an output folder (--output)")
    output = Path(config.output)
    checkpoint_dir = output / "checkpoint"
    if not config.resume and has_checkpoint(checkpoint_dir):
        raise FileExistsError(
            f"{output} already holds a training run; pass --resume to continue it, "
            "or choose another --output"
        )
    output.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    data = data if data is not None else load_triplets(config.data, limit=config.limit)
    n_steps = total_steps(config, len(data))
    check_sharding(config.batch_size, len(data), n_steps, ctx.world_size)
    embedder = build_embedder(config).to(ctx.device)
    seed_dropout(config.seed, ctx)
    loss_fn = build_loss(config.loss, config.temperature, config.hard_negatives, config.margin)
    trainable = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup, n_steps), n_steps)

    start = 0
    if config.resume and has_checkpoint(checkpoint_dir):
        start = load_checkpoint(
            checkpoint_dir,
            embedder.model,
            optimizer,
            scheduler,
            config.to_dict(),
            ctx.rank,
            ctx.world_size,
        )
        logger.info("resuming %s at step %d", output, start)
    log = None
    if ctx.is_main:
        text = json.dumps(config.to_dict(), indent=2) + "\n"
        atomic_write_text(output / "train_config.json", text)
        log = MetricsLog(output / "log.jsonl", keep_until_step=start)

    embedder.train()
    loss_value = float("nan")
    began = time.perf_counter()
    bar = tqdm(
        range(start, n_steps),
        initial=start,
        total=n_steps,
        desc="train",
        unit="step",
        disable=not ctx.is_main,
    )
    for step in bar:
        tick = time.perf_counter()
        indices = batch_indices(len(data), config.batch_size, config.seed, step)
        local, sizes = ctx.shard(indices)
        anchors, positives, negatives = triplet_batch(data, local)
        batch = (anchors, positives, negatives if config.hard_negatives else None)
        loss = forward_backward(embedder, loss_fn, batch, ctx, sizes, config.mini_batch_size)
        loss_value = mean_across(loss, ctx)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at step {step + 1}; stopped. The last checkpoint in "
                f"{checkpoint_dir} is intact: lower --lr or check the data, then --resume."
            )
        average_gradients(trainable, ctx)
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
            save_checkpoint_on_main(
                checkpoint_dir, embedder.model, optimizer, scheduler, done, config.to_dict(), ctx
            )

    if ctx.is_main:
        save_adapter(embedder, output)
    save_checkpoint_on_main(
        checkpoint_dir, embedder.model, optimizer, scheduler, n_steps, config.to_dict(), ctx
    )
    return TrainResult(output, n_steps, loss_value, time.perf_counter() - began)
