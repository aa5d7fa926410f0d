"""Which dataset each step draws its batch from, as a pure function of (seed, step).

Every batch comes from one dataset (negatives from another dataset are too easy to
teach anything), as in sentence-transformers' multi-dataset batch sampler. Steps are
laid out in blocks; block ``E`` holds ``counts[i]`` steps of dataset ``i``:

* ``proportional``: ``counts[i]`` = dataset i's batches per epoch, blocks shuffled
  with ``(seed, E)``, so one block is one pass over every dataset;
* ``round-robin``: blocks of one step per dataset, in the order given;
* ``weights=a:0.7,b:0.3``: block length = the total batches per epoch, split by the
  weights (largest remainder), shuffled; a dataset may repeat or skip examples.

Dataset ``i``'s own step at global step ``s`` is ``E * counts[i]`` plus the number of its
steps earlier in block ``E``: it walks through its epochs regardless of the others.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIXING_HELP = "proportional, round-robin or weights=NAME:W,NAME:W"


def parse_mixing(text: str) -> tuple[str, dict[str, float]]:
    """``(kind, weights)``; raises ``ValueError`` with the accepted forms."""
    text = text.strip()
    if text in ("proportional", "round-robin"):
        return text, {}
    if text.startswith("weights="):
        weights: dict[str, float] = {}
        for part in text.removeprefix("weights=").split(","):
            name, _, value = part.strip().rpartition(":")
            try:
                weight = float(value)
            except ValueError:
                weight = -1.0
            if not name or name in weights or not weight >= 0 or weight == float("inf"):
                raise ValueError(
                    f"--mixing: cannot read {part.strip()!r}; write weights=NAME:W,... with "
                    "each dataset name once and a weight >= 0"
                )
            weights[name] = weight
        if sum(weights.values()) <= 0:
            raise ValueError("--mixing: the weights sum to 0; give some dataset a weight > 0")
        return "weights", weights
    raise ValueError(f"--mixing must be {MIXING_HELP}, got {text!r}")


@dataclass(frozen=True)
class Mixing:
    """A step schedule over datasets with ``batches[i]`` batches per epoch each."""

    counts: tuple[int, ...]
    shuffle: bool

    @classmethod
    def build(cls, text: str, names: Sequence[str], batches: Sequence[int]) -> Mixing:
        kind, weights = parse_mixing(text)
        if kind == "round-robin":
            return cls(tuple(1 for _ in names), shuffle=False)
        if kind == "proportional":
            return cls(tuple(batches), shuffle=True)
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(
                f"--mixing names {', '.join(unknown)}, but the datasets are "
                f"{', '.join(names)}; a dataset not named gets weight 0"
            )
        share = np.array([weights.get(name, 0.0) for name in names])
        return cls(_largest_remainder(share / share.sum(), sum(batches)), shuffle=True)

    @property
    def block(self) -> int:
        return sum(self.counts)

    def locate(self, step: int, seed: int) -> tuple[int, int]:
        """(dataset index, that dataset's own step) for global ``step``."""
        epoch, position = divmod(step, self.block)
        owners, local = _block(self.counts, self.shuffle, seed, epoch)
        owner = int(owners[position])
        return owner, epoch * self.counts[owner] + int(local[position])


def _largest_remainder(shares: np.ndarray, total: int) -> tuple[int, ...]:
    raw = shares * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return tuple(int(c) for c in counts)


@functools.lru_cache(maxsize=4)
def _block(
    counts: tuple[int, ...], shuffle: bool, seed: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    owners = np.repeat(np.arange(len(counts)), counts)
    if shuffle and len(counts) > 1:
        owners = np.random.default_rng([seed % 2**64, epoch, len(counts)]).permutation(owners)
    local = np.zeros(len(owners), dtype=np.int64)
    for i in range(len(counts)):
        local[owners == i] = np.arange(counts[i])
    return owners, local
