"""Weight averaging: an exponential moving average (EMA) of the trainable (LoRA) weights.

Short, high-learning-rate runs end on a noisy iterate; the average of the last steps'
weights is often a better model at no training cost. The average is bias-corrected
(as Adam's moments are): after ``t`` steps it is

    sum_i (1 - decay) * decay**(t - i) * w_i / (1 - decay**t),   i = 1..t,

a weighted mean of the weights *after* each step, so the untrained initial weights
(LoRA's zero update) carry no weight however short the run. ``decay`` sets the
window: about ``1 / (1 - decay)`` steps (0.9: the last ~10).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class ExponentialAverage:
    """A bias-corrected EMA of ``parameters``, updated after each optimizer step."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the average's decay must be in (0, 1), got {decay}")
        self.parameters = parameters
        self.decay = decay
        self.steps = 0
        # Kept in fp32 whatever the weights' dtype: bf16 would round the small updates away.
        self.sums = [torch.zeros_like(p, dtype=torch.float32) for p in parameters]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in: ``sum = decay * sum + (1 - decay) * w``."""
        weights = [p.detach().float() for p in self.parameters]
        torch._foreach_lerp_(self.sums, weights, 1 - self.decay)
        self.steps += 1

    def averaged(self) -> list[torch.Tensor]:
        """The bias-corrected average, one tensor per parameter (in its dtype)."""
        if self.steps == 0:
            return [p.detach().clone() for p in self.parameters]
        correction = 1 - self.decay**self.steps
        return [
            (s / correction).to(p.dtype) for s, p in zip(self.sums, self.parameters, strict=True)
        ]

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """Swap the averaged weights into the parameters, and the trained ones back after."""
        trained = [p.detach().clone() for p in self.parameters]
        for parameter, value in zip(self.parameters, self.averaged(), strict=True):
            parameter.copy_(value)
        try:
            yield
        finally:
            for parameter, value in zip(self.parameters, trained, strict=True):
                parameter.copy_(value)

    def state_dict(self) -> dict[str, object]:
        return {"steps": self.steps, "sums": self.sums}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore a saved average (the decay is checked with the run's options on resume)."""
        self.steps = int(state["steps"])  # type: ignore[arg-type]
        for mine, saved in zip(self.sums, state["sums"], strict=True):  # type: ignore[call-overload]
            mine.copy_(saved)
