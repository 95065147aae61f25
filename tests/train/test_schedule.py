"""Learning-rate schedule factors against their closed forms."""

from __future__ import annotations

import math

from vsekit.config import TrainConfig
from vsekit.train.schedule import lr_factor


def test_warmup_then_cosine() -> None:
    f = lr_factor(TrainConfig(warmup_steps=4, schedule="cosine"), 10, 104)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for step in (4, 30, 54, 103, 200):
        expected = 0.5 * (1 + math.cos(math.pi * min((step - 4) / 100, 1.0)))
        assert math.isclose(f(step), expected)


def test_step_decay_and_constant() -> None:
    f = lr_factor(TrainConfig(schedule="step", step_epochs=[2, 3], step_gamma=0.1), 5, 100)
    assert [f(s) for s in (0, 9, 10, 14, 15, 99)] == [1, 1, 0.1, 0.1, 0.1 ** 2, 0.1 ** 2]
    g = lr_factor(TrainConfig(schedule="constant"), 5, 100)
    assert g(0) == g(99) == 1.0
