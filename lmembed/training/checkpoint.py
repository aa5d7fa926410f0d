"""Exact, atomic checkpoints: LoRA weights, optimizer, scheduler, RNG states, step.

The data order is a pure function of (seed, step), so the step number is the
data position; restoring the RNG states replays dropout exactly. A
multi-process run stores every rank's RNG states and its world size, and only
resumes with the same world size (the shards, hence dropout, depend on it).

Once the first checkpoint is written a complete one stays on disk whatever
instant the process dies at (see ``io.atomic_directory``), and a write that fails
(disk full) keeps the previous one and stops the run with ``CheckpointWriteError``.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from lmembed.faults import fault_point
from lmembed.io import atomic_directory, committed_directory, remove_partial_writes
from lmembed.training.averaging import ExponentialAverage

STATE_FILE = "trainer_state.json"
# Options that change what a step computes; resuming with different values would
# silently train a different run.
RESUME_MUST_MATCH = (
    "model",
    "data",
    "limit",
    "batch_size",
    "mini_batch_size",
    "seed",
    "steps",
    "epochs",
    "lr",
    "ema_decay",
    "temperature_lr",  # a learned temperature is an optimizer parameter group
    "lora_r",  # the adapter's shape and scale: a checkpoint of another one cannot continue
    "lora_alpha",
    "lora_targets",
    # The teacher and its term: its vectors (and the fill groups they come from) and how
    # much they pull.
    "teacher",
    "teacher_adapter",
    "teacher_batch_size",
    "distill_loss",
    "distill_weight",
    "teacher_temperature",
    # Which evaluations run, and which one the folder's adapter keeps.
    "eval_tasks",
    "eval_every",
    "keep_best",
    "early_stopping_patience",
)


# What training.pt may hold besides tensors and plain values: numpy's RNG state (an array
# of uint32). Loading allows nothing else, so a checkpoint folder from elsewhere cannot
# run code on --resume.
SAFE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous one on disk is intact."""


def rng_states() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None:
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class TrainingState:
    """What a checkpoint holds: the live objects of a run and the options that made it.

    ``config`` is the flat option dict (``TrainConfig.to_dict()``); resuming checks the
    options in ``RESUME_MUST_MATCH`` against it. ``average`` is the weight average
    (``--ema-decay``), if the run keeps one; ``loss`` the loss module, whose state is a
    learned temperature (``--temperature-lr``) or nothing.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: dict[str, Any]
    average: ExponentialAverage | None = None
    loss: torch.nn.Module | None = None

    def save(
        self, folder: str | Path, step: int, rng_per_rank: list[dict[str, Any]] | None = None
    ) -> None:
        """Write everything needed to continue at ``step``; replaces the old checkpoint whole.

        ``rng_per_rank`` holds every rank's ``rng_states()`` (default: this process's).
        """
        rng_per_rank = rng_per_rank or [rng_states()]
        remove_partial_writes(folder)
        try:
            with atomic_directory(folder) as tmp:
                self._write(tmp, step, rng_per_rank)
        except OSError as error:
            previous = checkpoint_step(folder)
            kept = (
                f"the step-{previous} checkpoint there is intact"
                if previous is not None
                else "no earlier checkpoint exists"
            )
            raise CheckpointWriteError(
                error.errno,
                f"training stopped: could not write the step-{step} checkpoint to {folder} "
                f"({error.strerror or error}); {kept}. Free disk space, then rerun with --resume",
            ) from error

    def _write(self, tmp: Path, step: int, rng_per_rank: list[dict[str, Any]]) -> None:
        """Serialise in memory, then write plain files: a full disk is then an OSError."""
        tensors = {k: v.contiguous() for k, v in get_peft_model_state_dict(self.model).items()}
        (tmp / "adapter.safetensors").write_bytes(save_safetensors(tensors))
        fault_point("checkpoint_write")
        training = io.BytesIO()
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_per_rank,
                "average": self.average.state_dict() if self.average else None,
                "loss": self.loss.state_dict() if self.loss is not None else None,
            },
            training,
        )
        (tmp / "training.pt").write_bytes(training.getvalue())
        fault_point("checkpoint_write")
        state = {"step": step, "world_size": len(rng_per_rank), "config": self.config}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    def load(self, folder: str | Path, rank: int = 0, world_size: int = 1) -> int:
        """Restore a checkpoint into the live objects (RNG: ``rank``'s); return its step."""
        folder = find_checkpoint(folder)
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        saved_world = state.get("world_size", 1)
        if saved_world != world_size:
            raise ValueError(
                f"cannot resume {folder}: it was written by {saved_world} process(es) and this "
                f"run has {world_size}; resume with `torchrun --nproc_per_node {saved_world}` "
                f"(or a plain run if 1), since the data shards and dropout streams depend on it"
            )
        changed = [k for k in RESUME_MUST_MATCH if state["config"].get(k) != self.config.get(k)]
        if changed:
            details = ", ".join(
                f"{k}: {state['config'].get(k)!r} -> {self.config.get(k)!r}" for k in changed
            )
            raise ValueError(
                f"cannot resume {folder}: options changed since it was written ({details}); "
                "resume with the options it was written with, or train into another --output"
            )
        set_peft_model_state_dict(self.model, load_file(str(folder / "adapter.safetensors")))
        training = load_training_file(folder / "training.pt")
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        set_rng_states(training["rng"][rank])
        if self.average is not None:
            self.average.load_state_dict(training["average"])
        if self.loss is not None and training.get("loss") is not None:
            self.loss.load_state_dict(training["loss"])
        return int(state["step"])


def load_training_file(path: Path) -> dict[str, Any]:
    """``training.pt`` with ``weights_only=True`` and only ``SAFE_GLOBALS`` allowed."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = found.group(1) if found else "an object weights_only loading does not allow"
        raise ValueError(
            f"{path}: refused to load: it holds {what}, beyond the tensors and plain values "
            "a checkpoint needs, and loading it could run code; resume only checkpoints "
            "lmembed wrote"
        ) from None


def find_checkpoint(folder: str | Path) -> Path:
    """The complete checkpoint written to ``folder`` (itself, or the copy a kill left aside)."""
    found = committed_directory(folder)
    if found is None or not (found / STATE_FILE).is_file():
        raise FileNotFoundError(f"no checkpoint in {folder}")
    return found


def has_checkpoint(folder: str | Path) -> bool:
    try:
        find_checkpoint(folder)
    except FileNotFoundError:
        return False
    return True


def checkpoint_step(folder: str | Path) -> int | None:
    """The step of the checkpoint in ``folder``, or None when there is none."""
    if not has_checkpoint(folder):
        return None
    state = json.loads((find_checkpoint(folder) / STATE_FILE).read_text(encoding="utf-8"))
    return int(state["step"])
