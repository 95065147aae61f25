"""Baseline in-batch ranking losses: VSE0 (sum of hinges), VSE++ (max violation), InfoNCE.

Conventions shared by every function here: ``sims`` [B, B] is the image × caption
similarity matrix of one batch (row i = image i, column j = caption j), so the positive pair
of image i and caption i sits on the diagonal. ``mask`` [B, B] bool is True where a
candidate is *not* a negative of its anchor (the diagonal, and other pairs of the same
image when same-image masking is on). i2t anchors are rows (image i ranks captions), t2i
anchors are columns (caption j ranks images).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from vsekit.errors import VsekitError
from vsekit.losses.base import LOSSES, LossOutput, same_image_mask

Reduction = Literal["mean", "sum"]


# --------------------------------------------------------------------------- pure math


def batch_similarities(image_emb: torch.Tensor, text_emb: torch.Tensor,
                       image_ids: torch.Tensor) -> torch.Tensor:
    """Check one batch's shapes and return sims [B, B] = image_emb @ text_emb.T.

    Computed in at least float32, also under autocast (the hinges and the InfoNCE logits
    need the precision). Raises :class:`VsekitError` for mismatched or empty inputs.
    """
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise VsekitError(f"loss inputs must be image and text embeddings of the same shape "
                          f"[B, D], got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}; "
                          f"check that both encoders project to model.embed_dim")
    if image_ids.shape != (image_emb.shape[0],):
        raise VsekitError(f"loss image_ids must have shape [B] = [{image_emb.shape[0]}], got "
                          f"{tuple(image_ids.shape)}; pass one image id per pair")
    if image_emb.shape[0] == 0:
        raise VsekitError("loss got an empty batch; use a dataset with at least one pair")
    dtype = torch.promote_types(torch.promote_types(image_emb.dtype, text_emb.dtype),
                                torch.float32)
    with torch.autocast(device_type=image_emb.device.type, enabled=False):
        return image_emb.to(dtype) @ text_emb.to(dtype).T


def exclusion_mask(image_ids: torch.Tensor, mask_same_image: bool) -> torch.Tensor:
    """bool [B, B]: True where a candidate is not a negative of its anchor.

    Always the diagonal; with ``mask_same_image`` also every pair sharing an image id.
    """
    if mask_same_image:
        return same_image_mask(image_ids, image_ids)
    return torch.eye(len(image_ids), dtype=torch.bool, device=image_ids.device)


def hinge_costs(sims: torch.Tensor, mask: torch.Tensor,
                margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triplet hinges of every (anchor, candidate) pair, both directions.

    Returns ``(cost_i2t, cost_t2i)``, each [B, B] and zero where ``mask``:
    cost_i2t[i, j] = [m + s_ij − s_ii]_+ (image anchor i, caption candidate j) and
    cost_t2i[i, j] = [m + s_ij − s_jj]_+ (caption anchor j, image candidate i).
    """
    positive = sims.diagonal()
    cost_i2t = torch.relu(margin + sims - positive[:, None]).masked_fill(mask, 0)
    cost_t2i = torch.relu(margin + sims - positive[None, :]).masked_fill(mask, 0)
    return cost_i2t, cost_t2i


def sum_violations(cost_i2t: torch.Tensor, cost_t2i: torch.Tensor) -> torch.Tensor:
    """[B]: per pair k, the sum of all hinges of image anchor k plus caption anchor k."""
    return cost_i2t.sum(dim=1) + cost_t2i.sum(dim=0)


def max_violations(cost_i2t: torch.Tensor, cost_t2i: torch.Tensor) -> torch.Tensor:
    """[B]: per pair k, the hardest hinge of image anchor k plus that of caption anchor k.

    An anchor whose candidates are all masked contributes 0 (masked costs are 0).
    """
    return cost_i2t.max(dim=1).values + cost_t2i.max(dim=0).values


def reduce_anchors(per_pair: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Scalar from [B] per-pair losses: ``"sum"``, or ``"mean"`` = sum / B."""
    total = per_pair.sum()
    return total / per_pair.shape[0] if reduction == "mean" else total


def vse0_loss(sims: torch.Tensor, mask: torch.Tensor, margin: float,
              reduction: Reduction) -> torch.Tensor:
    """VSE0: sum of hinges over every admissible negative, both directions (scalar)."""
    return reduce_anchors(sum_violations(*hinge_costs(sims, mask, margin)), reduction)


def vsepp_loss(sims: torch.Tensor, mask: torch.Tensor, margin: float,
               reduction: Reduction) -> torch.Tensor:
    """VSE++ (Faghri et al.): hinge of the hardest admissible negative per anchor (scalar)."""
    return reduce_anchors(max_violations(*hinge_costs(sims, mask, margin)), reduction)


def infonce_loss(sims: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (scalar): mean of i2t and t2i cross-entropies, each a mean over B.

    ``scale`` (0-d, = 1/temperature) multiplies ``sims``; masked off-diagonal candidates are
    removed from the softmax denominators, the diagonal positive always stays.
    """
    eye = torch.eye(sims.shape[0], dtype=torch.bool, device=sims.device)
    logits = (sims * scale).masked_fill(mask & ~eye, float("-inf"))
    target = torch.arange(sims.shape[0], device=sims.device)
    i2t = nn.functional.cross_entropy(logits, target)
    t2i = nn.functional.cross_entropy(logits.T, target)
    return (i2t + t2i) / 2


def similarity_diagnostics(sims: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached 0-d tensors: ``pos_sim`` (mean diagonal) and ``hard_neg_sim``.

    ``hard_neg_sim`` is the mean, over the anchors of both directions that have at least one
    admissible negative, of their highest negative similarity (0 when no anchor has one).
    """
    sims = sims.detach()
    negatives = sims.masked_fill(mask, float("-inf"))
    hardest = torch.cat([negatives.max(dim=1).values, negatives.max(dim=0).values])
    has_negative = torch.isfinite(hardest)
    hard_mean = hardest.where(has_negative, 0).sum() / has_negative.sum().clamp(min=1)
    return {"pos_sim": sims.diagonal().mean(), "hard_neg_sim": hard_mean}


def active_hinge_fraction(cost_i2t: torch.Tensor, cost_t2i: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
    """Detached 0-d: share of admissible (anchor, negative) triplets with a positive hinge."""
    active = (cost_i2t.detach() > 0).sum() + (cost_t2i.detach() > 0).sum()
    return active / (2 * (~mask).sum()).clamp(min=1)


# --------------------------------------------------------------------------- modules


@dataclass
class HingeParams:
    """Parameters of the hinge losses (``vse0``, ``vsepp``).

    Attributes:
        margin: triplet margin m (similarity units).
        reduction: ``"mean"`` (sum over anchors / B, the FNE reference warm-up) or ``"sum"``
            (the original VSE++).
        mask_same_image: exclude every pair of the anchor's image from the negatives;
            False excludes only the diagonal (the FNE reference warm-up).
    """

    margin: float = 0.2
    reduction: Reduction = "mean"
    mask_same_image: bool = True

    def validate(self, where: str) -> None:
        if self.margin < 0:
            raise VsekitError(f"{where}.margin must be non-negative, got {self.margin}")


class HingeLoss(nn.Module):
    """In-batch hinge loss; subclasses choose how an anchor's hinges are pooled."""

    pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __init__(self, params: HingeParams, **_context: Any) -> None:
        super().__init__()
        self.params = params

    def pool_for_epoch(self, epoch: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """How an anchor's hinges are pooled in ``epoch`` (fixed unless a subclass warms up)."""
        return self.pool

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                image_ids: torch.Tensor, *, epoch: int = 0, **_context: Any) -> LossOutput:
        """Loss of a batch: image_emb, text_emb [B, D] (normalised), image_ids int64 [B]."""
        sims = batch_similarities(image_emb, text_emb, image_ids)
        mask = exclusion_mask(image_ids, self.params.mask_same_image)
        costs = hinge_costs(sims, mask, self.params.margin)
        loss = reduce_anchors(self.pool_for_epoch(epoch)(*costs), self.params.reduction)
        diagnostics = similarity_diagnostics(sims, mask)
        diagnostics["active_hinges"] = active_hinge_fraction(*costs, mask)
        return LossOutput(loss, diagnostics)


@LOSSES.register("vse0", HingeParams)
class VSE0Loss(HingeLoss):
    """VSE0: sum of triplet hinges over all in-batch negatives, both directions."""

    pool = staticmethod(sum_violations)


@dataclass
class VSEPPParams(HingeParams):
    """:class:`HingeParams` plus ``mean_warmup_epochs``: epochs of sum-of-hinges (VSE0) before
    max violation, as VSE∞'s ``vse_mean_warmup_epochs`` (hardest negatives from a random
    start can collapse the embedding)."""

    mean_warmup_epochs: int = 0

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.mean_warmup_epochs < 0:
            raise VsekitError(f"{where}.mean_warmup_epochs must be non-negative, "
                              f"got {self.mean_warmup_epochs}")


@LOSSES.register("vsepp", VSEPPParams)
class VSEPPLoss(HingeLoss):
    """VSE++: triplet hinge of the hardest in-batch negative per anchor, both directions."""

    pool = staticmethod(max_violations)

    def pool_for_epoch(self, epoch: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return sum_violations if epoch < self.params.mean_warmup_epochs else max_violations


@dataclass
class InfoNCEParams:
    """Parameters of the symmetric InfoNCE loss (``infonce``).

    Attributes:
        temperature: initial (or fixed) softmax temperature T; logits = sims / T.
        learn_temperature: learn ``logit_scale`` = log(1/T) as a parameter (CLIP).
        max_logit_scale: upper bound on 1/T; the learned scale is clamped to it (CLIP: 100).
        mask_same_image: drop other pairs of the anchor's image from the denominators.
    """

    temperature: float = 0.07
    learn_temperature: bool = True
    max_logit_scale: float = 100.0
    mask_same_image: bool = True

    def validate(self, where: str) -> None:
        if self.max_logit_scale <= 0:
            raise VsekitError(f"{where}.max_logit_scale must be positive, "
                              f"got {self.max_logit_scale}")
        if self.temperature < 1 / self.max_logit_scale:
            raise VsekitError(f"{where}.temperature must be at least 1/max_logit_scale = "
                              f"{1 / self.max_logit_scale:g}, got {self.temperature}; raise it "
                              f"or raise max_logit_scale")


@LOSSES.register("infonce", InfoNCEParams)
class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE over the in-batch similarity matrix, optionally learned temperature.

    With ``learn_temperature`` the module owns the parameter ``logit_scale`` (so
    ``loss.parameters()`` yields it for the optimiser); before each use it is clamped in
    place to log(max_logit_scale), CLIP's projection. Otherwise ``logit_scale`` is a buffer.
    """

    def __init__(self, params: InfoNCEParams, **_context: Any) -> None:
        super().__init__()
        self.params = params
        self.max_log_scale = math.log(params.max_logit_scale)
        initial = torch.tensor(math.log(1 / params.temperature))
        if params.learn_temperature:
            self.logit_scale = nn.Parameter(initial)
        else:
            self.register_buffer("logit_scale", initial)

    def scale(self) -> torch.Tensor:
        """0-d: the current logit scale 1/T, after clamping the parameter to its bound."""
        with torch.no_grad():
            self.logit_scale.clamp_(max=self.max_log_scale)
        return self.logit_scale.exp()

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                image_ids: torch.Tensor, **_context: Any) -> LossOutput:
        """Loss of a batch: image_emb, text_emb [B, D] (normalised), image_ids int64 [B]."""
        sims = batch_similarities(image_emb, text_emb, image_ids)
        mask = exclusion_mask(image_ids, self.params.mask_same_image)
        scale = self.scale()
        loss = infonce_loss(sims, mask, scale)
        diagnostics = similarity_diagnostics(sims, mask)
        diagnostics["temperature"] = 1 / scale.detach()
        return LossOutput(loss, diagnostics)
