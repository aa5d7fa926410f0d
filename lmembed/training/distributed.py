"""Multi-process data parallelism under ``torchrun``: global negatives, one writer.

Every rank holds the same LoRA weights and reads the same global batch from the
sampler, embeds its contiguous shard, and all-gathers the positives and hard
negatives *with gradient*, so each anchor is scored against the whole global
batch. Anchors stay local, unless the loss is symmetric (positives also choose among
the anchors) or the data is text-only (each text is scored against the others): then
they are gathered too. A teacher's rows (distillation) are gathered like the student's,
without gradient, so every anchor sees the global candidates of both.

Gradients. Let ``L`` be the full-batch loss (mean over all ``B`` anchors) and
rank ``r`` hold ``n_r`` anchors with local mean loss ``L_r``. Each rank
backpropagates ``O_r = W * n_r / B * L_r``; the gather's backward sums, for every
row, the gradients of all ranks' objectives (``sum_r O_r = W * L``), and
``average_gradients`` then divides the summed parameter gradients by ``W``
(DDP's convention). The result is exactly the single-process gradient ``dL/dθ``,
and ``mean_r O_r`` is ``L`` itself, which is what gets logged.

We all-reduce the LoRA gradients ourselves instead of wrapping the model in
DDP: LoRA trains well under 1% of the weights, GradCache runs several
forward passes per step (DDP would need ``no_sync`` juggling), and one flat
all-reduce per step is all DDP would do here anyway.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import transformers

from lmembed.data.sampler import shard_sizes, steps_per_epoch
from lmembed.data.training import Batch
from lmembed.losses.distillation import TeacherRows
from lmembed.training.checkpoint import TrainingState, rng_states


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in the job; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs and writes files."""
        return self.rank == 0

    def shard(self, batch: Batch) -> tuple[Batch, list[int]]:
        """This rank's contiguous part of a global batch, and every rank's part size."""
        sizes = shard_sizes(len(batch), self.world_size)
        return batch.shard(sizes, self.rank), sizes


@contextmanager
def process_group() -> Iterator[Distributed]:
    """Join the job torchrun describes in the environment (gloo on CPU, NCCL on GPU).

    Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``.
    A group that is already initialised (a caller's) is used and left open; one
    created here is destroyed on exit. Ranks other than 0 only report warnings.
    """
    cuda = torch.cuda.is_available()
    owned = False
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if rank > 0:
        logging.getLogger("lmembed").setLevel(logging.WARNING)
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        owned = True
    try:
        yield Distributed(rank, world_size, device)
    finally:
        if owned:
            dist.destroy_process_group()


def check_sharding(
    batch_size: int, dataset_sizes: Sequence[int], n_steps: int, world_size: int
) -> None:
    """Fail before training when some batch could not give every rank an example."""
    if world_size == 1:
        return
    if batch_size % world_size:
        raise ValueError(
            f"--batch-size {batch_size} is the global batch and must split evenly over the "
            f"{world_size} processes; use a multiple of {world_size}"
        )
    for n_examples in dataset_sizes:
        per_epoch = steps_per_epoch(n_examples, batch_size)
        tail = n_examples - (per_epoch - 1) * batch_size
        if n_steps >= per_epoch and tail < world_size:
            raise ValueError(
                f"the last batch of each epoch holds {tail} example(s) ({n_examples} "
                f"examples, --batch-size {batch_size}), fewer than the {world_size} "
                "processes; change --batch-size or --limit so that every process gets one"
            )


def seed_dropout(seed: int, job: Distributed) -> None:
    """Give ranks > 0 their own dropout stream (seed + rank).

    Called after the LoRA weights are built from the shared seed, so weights
    agree everywhere; rank 0 keeps the stream a single-process run would use.
    """
    if job.rank > 0:
        torch.manual_seed(seed + job.rank)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 (ranks may hold different row counts).

    Backward all-reduces the full gradient and returns this rank its own rows:
    the sum of every rank's loss gradient with respect to them. Only all_gather
    and all_reduce are used, which gloo and NCCL both implement.
    """

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        ctx.sizes, ctx.rank = list(sizes), dist.get_rank()
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_rows(local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Every rank's rows, in rank order, with gradient flowing back to their owners."""
    return _GatherRows.apply(local, sizes)


LossFn = Callable[..., torch.Tensor]


def local_rows_first(rows: torch.Tensor, offset: int) -> torch.Tensor:
    """Rotate gathered rows so this rank's block (starting at ``offset``) comes first.

    The losses expect anchor ``i``'s positive at row ``i``; every other row is just a
    candidate, and InfoNCE does not depend on the order of candidates.
    """
    return torch.roll(rows, -offset, dims=0) if offset else rows


def global_rows(
    anchors: torch.Tensor,
    positives: torch.Tensor | None,
    negatives: torch.Tensor | None,
    job: Distributed,
    sizes: Sequence[int],
    with_anchors: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The global batch's positives, hard negatives and (``with_anchors``) anchors, each
    with this rank's rows first; ``None`` stays ``None``."""
    offset = sum(sizes[: job.rank])

    def gather(rows: torch.Tensor, per_anchor: int = 1) -> torch.Tensor:
        gathered = gather_rows(rows, [n * per_anchor for n in sizes])
        return local_rows_first(gathered, offset * per_anchor)

    candidates = None if positives is None else gather(positives)
    hard = None if negatives is None else gather(negatives, negatives.shape[0] // anchors.shape[0])
    return candidates, hard, gather(anchors) if with_anchors else None


def global_batch_loss(
    loss_fn: LossFn,
    anchors: torch.Tensor,
    positives: torch.Tensor | None,
    negatives: torch.Tensor | None,
    job: Distributed,
    sizes: Sequence[int],
    teacher: TeacherRows | None = None,
) -> torch.Tensor:
    """This rank's objective ``O_r``: its anchors scored against the global batch.

    ``negatives`` holds the same number of rows per anchor on every rank (one hard
    negative, or several). See the module docstring: averaging ``O_r`` over ranks gives
    the full-batch loss, and averaging the gradients gives the full-batch gradient.
    ``positives`` is ``None`` for text-only data (distillation alone): the candidates are
    then the global batch's texts, passed as ``anchor_candidates``. ``teacher`` holds the
    teacher's rows for a distilling loss; they are gathered the same way.
    """
    extra: dict[str, Any] = {}
    if job.world_size == 1:
        if teacher is not None:
            extra["teacher"] = teacher
        return loss_fn(anchors, positives, negatives, **extra)
    # Symmetric losses: positives also choose among all anchors; text-only: texts do.
    with_anchors = positives is None or getattr(loss_fn, "symmetric", False)
    candidates, hard, everyone = global_rows(
        anchors, positives, negatives, job, sizes, with_anchors
    )
    if everyone is not None:
        extra["anchor_candidates"] = everyone
    if teacher is not None:
        rows = global_rows(*teacher[:3], job, sizes, with_anchors)
        extra["teacher"] = TeacherRows(teacher.anchors, *rows)
    local = loss_fn(anchors, candidates, hard, **extra)
    return local * (job.world_size * sizes[job.rank] / sum(sizes))


def mean_across(value: torch.Tensor, job: Distributed) -> float:
    """Mean of a scalar over ranks (the same number on every rank)."""
    if job.world_size == 1:
        return value.item()
    total = value.detach().float().reshape(1).to(job.device)
    dist.all_reduce(total)
    return total.item() / job.world_size


def average_gradients(params: Sequence[torch.nn.Parameter], job: Distributed) -> None:
    """Replace each gradient by its mean over ranks, in one flat all-reduce."""
    if job.world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= job.world_size
    for param, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
        param.grad = grad.view_as(param)


def gather_objects(obj: Any, job: Distributed) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if job.world_size == 1:
        return [obj]
    objects: list[Any] = [None] * job.world_size
    dist.all_gather_object(objects, obj)
    return objects


def broadcast_flag(flag: bool, job: Distributed) -> bool:
    """Rank 0's ``flag`` on every rank (the others wait for it, as at a barrier)."""
    if job.world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=job.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def barrier(job: Distributed) -> None:
    if job.world_size > 1:
        dist.barrier()


def save_checkpoint_on_main(
    state: TrainingState, folder: str | os.PathLike, step: int, job: Distributed
) -> None:
    """Rank 0 writes the checkpoint with every rank's RNG states; the others wait for it.

    Weights and optimizer state are identical on all ranks (gradients are
    averaged), so one copy suffices; dropout streams are per rank.
    """
    rng_per_rank = gather_objects(rng_states(), job)
    if job.is_main:
        state.save(folder, step, rng_per_rank)
    barrier(job)
