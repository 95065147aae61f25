"""Baseline in-batch ranking losses: VSE0 (sum of hinges), VSE++ (max violation), InfoNCE.

Every loss here works on :class:`PairSims`, the similarities of this process's B anchors
against all N candidates of the batch, in both directions: ``i2t`` [B, N] (image anchor i
ranks captions j) and ``t2i`` [B, N] (caption anchor i ranks images j); ``positive`` [B] is
the column of each anchor's own pair. On one process N = B, ``i2t`` is the batch's image ×
caption matrix and ``t2i`` its transpose (a view, no copy); under DDP N is the global batch
(the other ranks' embeddings are gathered with gradient, :mod:`vsekit.distributed`) and
each rank returns its share of the global loss. Masks are bool [B, N], True where a
candidate is *not* a negative of its anchor (always the positive; with same-image masking
also every pair of the anchor's image); one mask serves both directions, since both
relations are symmetric.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from vsekit import distributed
from vsekit.errors import VsekitError
from vsekit.losses.base import LOSSES, LossOutput, same_image_mask

Reduction = Literal["mean", "sum"]
Pool = Literal["sum", "max"]


# --------------------------------------------------------------------------- pure math


def check_batch(image_emb: torch.Tensor, text_emb: torch.Tensor,
                image_ids: torch.Tensor) -> None:
    """Raise :class:`VsekitError` unless image_emb, text_emb are [B, D] and image_ids [B],
    B ≥ 1."""
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise VsekitError(f"loss inputs must be image and text embeddings of the same shape "
                          f"[B, D], got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}; "
                          f"check that both encoders project to model.embed_dim")
    if image_ids.shape != (image_emb.shape[0],):
        raise VsekitError(f"loss image_ids must have shape [B] = [{image_emb.shape[0]}], got "
                          f"{tuple(image_ids.shape)}; pass one image id per pair")
    if image_emb.shape[0] == 0:
        raise VsekitError("loss got an empty batch; use a dataset with at least one pair")


def batch_similarities(image_emb: torch.Tensor, text_emb: torch.Tensor,
                       image_ids: torch.Tensor) -> torch.Tensor:
    """Check one batch's shapes (:func:`check_batch`) and return sims [B, B] =
    image_emb @ text_emb.T, in at least float32, also under autocast (the hinges and the
    InfoNCE logits need the precision)."""
    check_batch(image_emb, text_emb, image_ids)
    return similarity(image_emb, text_emb)


def similarity(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """anchors [B, D] @ candidates [N, D].T in at least float32, autocast off: [B, N]."""
    dtype = torch.promote_types(torch.promote_types(anchors.dtype, candidates.dtype),
                                torch.float32)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        return anchors.to(dtype) @ candidates.to(dtype).T


@dataclass
class PairSims:
    """In-batch similarities of B anchors against N candidates, both directions.

    Attributes:
        i2t: [B, N], image anchor i × caption candidate j.
        t2i: [B, N], caption anchor i × image candidate j.
        positive: int64 [B], the column of anchor i's own pair (i on one process).
        ids: int64 [B], the anchors' image ids; candidate_ids: int64 [N], the candidates'.
        shared: ``t2i`` is ``i2t.T`` (one process), so an elementwise map of one direction
            gives the other's by transposition.
    """

    i2t: torch.Tensor
    t2i: torch.Tensor
    positive: torch.Tensor
    ids: torch.Tensor
    candidate_ids: torch.Tensor
    shared: bool

    @classmethod
    def from_matrix(cls, sims: torch.Tensor, image_ids: torch.Tensor | None = None
                    ) -> PairSims:
        """One process's view of an image × caption matrix sims [B, B] (ids default 0…B−1)."""
        positive = torch.arange(sims.shape[0], device=sims.device)
        ids = positive if image_ids is None else image_ids
        return cls(sims, sims.T, positive, ids, ids, shared=True)

    def directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(i2t, t2i)."""
        return self.i2t, self.t2i

    def same_image(self) -> torch.Tensor:
        """bool [B, N]: the candidate shares the anchor's image id."""
        return same_image_mask(self.ids, self.candidate_ids)

    def own_pair(self) -> torch.Tensor:
        """bool [B, N]: the candidate is the anchor's own pair."""
        columns = torch.arange(self.i2t.shape[1], device=self.positive.device)
        return columns[None, :] == self.positive[:, None]

    def exclusion(self, mask_same_image: bool) -> torch.Tensor:
        """bool [B, N]: candidates that are not negatives (own pair; same image if asked)."""
        return self.same_image() if mask_same_image else self.own_pair()

    def positives(self, sims: torch.Tensor) -> torch.Tensor:
        """[B]: each anchor's similarity to its own pair in one direction's ``sims``."""
        return sims.gather(1, self.positive[:, None]).squeeze(1)

    def masks(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(i2t mask, t2i mask) from an i2t-oriented ``mask`` [B, N]: on one process the t2i
        rows are columns of the matrix, so they take ``mask.T``; under DDP ``mask`` itself
        (the masks built here, same image and own pair, are symmetric relations)."""
        return mask, (mask.T if self.shared else mask)

    def both(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fn(i2t, i2t mask), fn(t2i, t2i mask)) for an elementwise ``fn``; on one process
        computed once (the t2i result is the transpose of the i2t one)."""
        first = fn(self.i2t, mask)
        return (first, first.T) if self.shared else (first, fn(self.t2i, mask))


def pair_similarities(image_emb: torch.Tensor, text_emb: torch.Tensor,
                      image_ids: torch.Tensor) -> PairSims:
    """:class:`PairSims` of a batch: image_emb, text_emb [B, D] (normalised), ids int64 [B].

    One process: one B×B matmul. Under DDP the embeddings and ids of every rank are gathered
    (embeddings with gradient) and this rank's B anchors are compared with all W·B candidates.
    """
    check_batch(image_emb, text_emb, image_ids)
    if not distributed.is_distributed():
        return PairSims.from_matrix(similarity(image_emb, text_emb), image_ids)
    shard = distributed.local_shard(image_emb.shape[0])
    positive = torch.arange(shard.offset, shard.offset + shard.size, device=image_ids.device)
    all_images, all_texts = distributed.gather_many(image_emb, text_emb)
    return PairSims(similarity(image_emb, all_texts), similarity(text_emb, all_images), positive,
                    image_ids, distributed.gather_rows(image_ids), shared=False)


def exclusion_mask(image_ids: torch.Tensor, mask_same_image: bool) -> torch.Tensor:
    """bool [B, B] of one process's batch: True where a candidate is not a negative of its
    anchor. Always the diagonal; with ``mask_same_image`` also every pair sharing an image id.
    """
    if mask_same_image:
        return same_image_mask(image_ids, image_ids)
    return torch.eye(len(image_ids), dtype=torch.bool, device=image_ids.device)


def anchor_hinges(sims: torch.Tensor, positive: torch.Tensor, mask: torch.Tensor,
                  margin: float) -> torch.Tensor:
    """[B, N]: triplet hinges [m + s_ij − s_i,pos(i)]_+ of every (anchor, candidate), 0 where
    ``mask``. sims [B, N] (rows are anchors), positive int64 [B], mask bool [B, N]."""
    own = sims.gather(1, positive[:, None])
    return torch.relu(margin + sims - own).masked_fill(mask, 0)


def pair_hinges(pairs: PairSims, mask: torch.Tensor, margin: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cost_i2t, cost_t2i), each [B, N]: :func:`anchor_hinges` of both directions."""
    (sims_i2t, sims_t2i), (mask_i2t, mask_t2i) = pairs.directions(), pairs.masks(mask)
    return (anchor_hinges(sims_i2t, pairs.positive, mask_i2t, margin),
            anchor_hinges(sims_t2i, pairs.positive, mask_t2i, margin))


POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": lambda cost: cost.sum(dim=1),
    "max": lambda cost: cost.max(dim=1).values,  # all-masked anchors: 0 (masked costs are 0)
}


def pooled_hinges(cost_i2t: torch.Tensor, cost_t2i: torch.Tensor, pool: Pool) -> torch.Tensor:
    """[B]: per pair k, image anchor k's pooled hinges plus caption anchor k's (``"sum"``:
    VSE0; ``"max"``: the hardest negative, VSE++)."""
    return POOLS[pool](cost_i2t) + POOLS[pool](cost_t2i)


def reduce_anchors(per_pair: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Scalar from [B] per-pair losses: ``"mean"`` = sum / B, or ``"sum"``.

    Under DDP this is the rank's share of the global value (B is the local batch, equal on
    every rank; a sum is multiplied by W), so the average over ranks is the global loss.
    """
    total = per_pair.sum()
    if reduction == "mean":
        return total / per_pair.shape[0]
    return total * distributed.world_size()


def hinge_loss(pairs: PairSims, mask: torch.Tensor, margin: float, pool: Pool,
               reduction: Reduction) -> torch.Tensor:
    """VSE0 (``pool="sum"``) or VSE++ (``pool="max"``) over both directions (scalar)."""
    return reduce_anchors(pooled_hinges(*pair_hinges(pairs, mask, margin), pool), reduction)


def vse0_loss(sims: torch.Tensor, mask: torch.Tensor, margin: float,
              reduction: Reduction) -> torch.Tensor:
    """VSE0 on one process's sims [B, B]: sum of hinges over every admissible negative."""
    return hinge_loss(PairSims.from_matrix(sims), mask, margin, "sum", reduction)


def vsepp_loss(sims: torch.Tensor, mask: torch.Tensor, margin: float,
               reduction: Reduction) -> torch.Tensor:
    """VSE++ (Faghri et al.) on one process's sims [B, B]: hinge of the hardest negative."""
    return hinge_loss(PairSims.from_matrix(sims), mask, margin, "max", reduction)


def infonce_loss(pairs: PairSims, mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (scalar): mean of i2t and t2i cross-entropies, each a mean over B.

    ``scale`` (0-d, = 1/temperature) multiplies the similarities; masked candidates other
    than the positive are removed from the softmax denominators.
    """
    negatives_only = mask & ~pairs.own_pair()
    logits = pairs.both(lambda s, m: (s * scale).masked_fill(m, float("-inf")), negatives_only)
    i2t, t2i = (nn.functional.cross_entropy(x, pairs.positive) for x in logits)
    return (i2t + t2i) / 2


def similarity_diagnostics(pairs: PairSims, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached 0-d tensors: ``pos_sim`` (mean positive similarity) and ``hard_neg_sim``.

    ``hard_neg_sim`` is the mean, over the anchors of both directions that have at least one
    admissible negative, of their highest negative similarity (0 when no anchor has one).
    ``mask`` is i2t-oriented (:meth:`PairSims.masks`).
    """
    with torch.no_grad():
        negatives = pairs.both(lambda s, m: s.masked_fill(m, float("-inf")), mask)
        hardest = torch.cat([n.max(dim=1).values for n in negatives])
        has_negative = torch.isfinite(hardest)
        hard_mean = hardest.where(has_negative, 0).sum() / has_negative.sum().clamp(min=1)
        return {"pos_sim": pairs.positives(pairs.i2t).mean(), "hard_neg_sim": hard_mean}


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


def context_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor, image_ids: torch.Tensor,
                  pairs: PairSims | None) -> PairSims:
    """The :class:`PairSims` a caller already built for this batch (``pairs=`` in a loss's
    context, e.g. by ``bcls`` for its base loss: one gather per step), else new ones."""
    return pairs if pairs is not None else pair_similarities(image_emb, text_emb, image_ids)


class HingeLoss(nn.Module):
    """In-batch hinge loss; subclasses choose how an anchor's hinges are pooled."""

    pool: Pool

    def __init__(self, params: HingeParams, **_context: Any) -> None:
        super().__init__()
        self.params = params

    def pool_for_epoch(self, epoch: int) -> Pool:
        """How an anchor's hinges are pooled in ``epoch`` (fixed unless a subclass warms up)."""
        return self.pool

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                image_ids: torch.Tensor, *, epoch: int = 0, pairs: PairSims | None = None,
                **_context: Any) -> LossOutput:
        """Loss of a batch: image_emb, text_emb [B, D] (normalised), image_ids int64 [B]."""
        pairs = context_pairs(image_emb, text_emb, image_ids, pairs)
        mask = pairs.exclusion(self.params.mask_same_image)
        costs = pair_hinges(pairs, mask, self.params.margin)
        loss = reduce_anchors(pooled_hinges(*costs, self.pool_for_epoch(epoch)),
                              self.params.reduction)
        diagnostics = similarity_diagnostics(pairs, mask)
        diagnostics["active_hinges"] = active_hinge_fraction(*costs, mask)
        return LossOutput(loss, diagnostics)


@LOSSES.register("vse0", HingeParams)
class VSE0Loss(HingeLoss):
    """VSE0: sum of triplet hinges over all in-batch negatives, both directions."""

    pool = "sum"


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

    pool = "max"

    def pool_for_epoch(self, epoch: int) -> Pool:
        return "sum" if epoch < self.params.mean_warmup_epochs else "max"


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
                image_ids: torch.Tensor, *, pairs: PairSims | None = None,
                **_context: Any) -> LossOutput:
        """Loss of a batch: image_emb, text_emb [B, D] (normalised), image_ids int64 [B]."""
        pairs = context_pairs(image_emb, text_emb, image_ids, pairs)
        mask = pairs.exclusion(self.params.mask_same_image)
        scale = self.scale()
        loss = infonce_loss(pairs, mask, scale)
        diagnostics = similarity_diagnostics(pairs, mask)
        diagnostics["temperature"] = 1 / scale.detach()
        return LossOutput(loss, diagnostics)
