"""Momentum (EMA) copies of a model (FNE's g_v, g_t; methods.md §1.2).

The copy starts equal to the online model, never receives gradients, and follows it with
θ_g ← μ·θ_g + (1 − μ)·θ_f, one fused foreach op per step. Only parameters are averaged, as in
the reference; buffers (e.g. BatchNorm running statistics) evolve through the copy's own
forward passes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vsekit.errors import VsekitError


def momentum_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters never require gradients."""
    clone = copy.deepcopy(model)
    clone.requires_grad_(False)
    return clone


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """In place: every parameter of ``target`` ← μ·target + (1 − μ)·source (μ = ``momentum``).

    Parameters are paired in registration order. Those frozen in ``source`` are skipped: they
    never change, so the copy already equals them (lerp of equal values is exact).
    """
    targets, sources = list(target.parameters()), list(source.parameters())
    if len(targets) != len(sources):
        raise VsekitError("the momentum copy and the online model have different parameters; "
                          "build the loss's momentum copy from this model (loss.bind)")
    pairs = zip(targets, sources, strict=True)
    trainable = [(g, f) for g, f in pairs if f.requires_grad]
    if trainable:
        torch._foreach_lerp_([g for g, _ in trainable], [f for _, f in trainable],
                             1.0 - momentum)
