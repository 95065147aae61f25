"""Learning-rate schedules: linear warm-up, then constant, cosine or step decay."""

from __future__ import annotations

import math
from collections.abc import Callable

from vsekit.config import TrainConfig


def lr_factor(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr as a function of the optimiser step (0-based)."""
    warmup = config.warmup_steps
    milestones = [epoch * steps_per_epoch for epoch in config.step_epochs]

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            span = max(total_steps - warmup, 1)
            progress = min(max(step - warmup, 0) / span, 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.schedule == "step":
            return config.step_gamma ** sum(step >= m for m in milestones)
        return 1.0

    return factor
