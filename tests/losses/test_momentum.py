"""Momentum copies: EMA update against a per-element loop, frozen parameters, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vsekit.errors import VsekitError
from vsekit.losses.momentum import ema_update_, momentum_copy


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_copy_is_equal_detached_and_independent() -> None:
    model = small_model(0)
    copy = momentum_copy(model)
    for p, q in zip(model.parameters(), copy.parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
        assert not q.requires_grad and p.requires_grad


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.995, 1.0])
def test_ema_matches_elementwise_loop(momentum: float) -> None:
    online, target = small_model(0), momentum_copy(small_model(1))
    before = [p.detach().clone() for p in target.parameters()]
    ema_update_(target, online, momentum)
    for old, new, src in zip(before, target.parameters(), online.parameters(), strict=True):
        flat_old, flat_src = old.flatten().tolist(), src.detach().flatten().tolist()
        expected = [momentum * g + (1 - momentum) * f
                    for g, f in zip(flat_old, flat_src, strict=True)]
        torch.testing.assert_close(new.flatten(), torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_frozen_parameters_are_skipped_and_buffers_untouched() -> None:
    online = small_model(0)
    online[0].requires_grad_(False)
    target = momentum_copy(small_model(1))
    frozen_before = target[0].weight.detach().clone()
    buffer_before = target[1].running_mean.clone()
    ema_update_(target, online, 0.9)
    assert torch.equal(target[0].weight, frozen_before)
    assert torch.equal(target[1].running_mean, buffer_before)
    assert not torch.equal(target[2].weight, small_model(1)[2].weight)


def test_frozen_equal_parameters_stay_bit_equal_over_many_steps() -> None:
    online = small_model(0)
    target = momentum_copy(online)
    for _ in range(50):
        ema_update_(target, online, 0.995)
    for p, q in zip(online.parameters(), target.parameters(), strict=True):
        assert torch.equal(p, q)


def test_mismatched_models_raise() -> None:
    with pytest.raises(VsekitError, match="momentum copy"):
        ema_update_(nn.Linear(2, 2), small_model(0), 0.9)
