"""FNE: false negative elimination by weighted negative sampling (methods.md §1).

Each anchor draws one negative from a pool (this batch's momentum features + a memory queue)
with weights that favour hard negatives, lower probable false negatives (a Bayes posterior on
two Gaussians of similarity, :mod:`vsekit.losses.stats`) and drop easy ones (cut-down). The
loss is the triplet hinge on the drawn negative, both directions, summed and divided by B.

Pure math first (:func:`negative_sampling_weights`, :func:`fallback_index`,
:func:`fne_loss_path`), then the registered module (``loss: {name: fne}``) that owns the
momentum copy, the queue and the statistics. Shapes: B anchors, N = B + Q candidates, D
embedding size; similarities are cosines of unit vectors. No step makes a host sync.
See docs/fne.md for every reference-parity choice and the numerics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from vsekit import distributed
from vsekit.distributed import Shard
from vsekit.errors import VsekitError
from vsekit.losses.base import LOSSES, LossOutput, same_image_mask
from vsekit.losses.momentum import ema_update_, momentum_copy
from vsekit.losses.queue import MemoryQueue
from vsekit.losses.ranking import (
    PairSims,
    check_batch,
    context_pairs,
    pair_hinges,
    pair_similarities,
    pooled_hinges,
    reduce_anchors,
    similarity_diagnostics,
)
from vsekit.losses.stats import (
    SimilarityStats,
    hardest_negatives,
    inbatch_observations,
    pool_observations,
)

#: Smallest variance used in the Gaussians (σ ≥ 1e-6): keeps 1/σ² finite; the reference
#: would raise (σ = 0) or divide 0 by 0 there.
VAR_FLOOR = 1e-12

Scalar = float | torch.Tensor


class GaussianStats(Protocol):
    """What the weights read from the statistics (Python floats or 0-d tensors)."""

    pos_mean: Scalar
    pos_var: Scalar
    neg_mean: Scalar
    neg_var: Scalar
    count: Scalar


# --------------------------------------------------------------------------- pure math


def _stat(value: Scalar, device: torch.device) -> torch.Tensor:
    """0-d float64 tensor on ``device`` (a no-op for statistics already there)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def compute_dtype(sims: torch.Tensor) -> torch.dtype:
    """The dtype the weights are computed in: the input's, but at least float32."""
    return torch.promote_types(sims.dtype, torch.float32)


def log_odds(sims: torch.Tensor, stats: GaussianStats, prior_ratio: float) -> torch.Tensor:
    """ℓ = log p⁺(s) − log p⁻(s) − log(R − 1), elementwise over sims (any shape; new tensor).

    p± are the Normal densities N(s; μ±, σ±²) (variances floored at :data:`VAR_FLOOR`); the
    false-negative posterior is P = sigmoid(ℓ) = p⁺ / (p⁺ + (R − 1)·p⁻). Evaluated as
    ℓ = (b − a)(b + a) + c with a = (s − μ⁺)/(σ⁺√2), b = (s − μ⁻)/(σ⁻√2),
    c = log(σ⁻/σ⁺) − log(R − 1): finite for any finite s, no density ever underflows, and
    two B×N buffers in place.
    """
    dtype = compute_dtype(sims)
    s = sims.to(dtype)
    mean_p, var_p, mean_n, var_n = (_stat(getattr(stats, k), s.device) for k in
                                    ("pos_mean", "pos_var", "neg_mean", "neg_var"))
    var_p, var_n = var_p.clamp(min=VAR_FLOOR), var_n.clamp(min=VAR_FLOOR)
    const = 0.5 * torch.log(var_n / var_p) - math.log(prior_ratio - 1)
    a = (s - mean_p.to(dtype)).mul_((0.5 / var_p).sqrt().to(dtype))
    b = (s - mean_n.to(dtype)).mul_((0.5 / var_n).sqrt().to(dtype))
    b.sub_(a)  # b − a
    a.mul_(2).add_(b)  # a + b
    return b.mul_(a).add_(const.to(dtype))


def reference_posterior(sims: torch.Tensor, stats: GaussianStats,
                        prior_ratio: float) -> torch.Tensor:
    """P = p⁺ / (p⁺ + (R − 1)·p⁻) with the densities evaluated directly, as the reference does.

    Underflow outcomes [ref]: both densities 0 → NaN; only p⁻ → 1; only p⁺ → 0. Used with
    ``reference_numerics=True`` for parity experiments; variances are floored as in
    :func:`log_odds` (the reference raises on σ = 0).
    """
    dtype = compute_dtype(sims)
    s = sims.to(dtype)

    def density(mean: Scalar, var: Scalar) -> torch.Tensor:
        scale = _stat(var, s.device).clamp(min=VAR_FLOOR).to(dtype).sqrt()
        normal = torch.distributions.Normal(_stat(mean, s.device).to(dtype), scale,
                                            validate_args=False)
        return normal.log_prob(s).exp()

    p_pos = density(stats.pos_mean, stats.pos_var)
    p_neg = density(stats.neg_mean, stats.neg_var)
    return p_pos / (p_pos + (prior_ratio - 1) * p_neg)


def fallback_index(sims: torch.Tensor, pos_sims: torch.Tensor, mask: torch.Tensor,
                   margin: float) -> torch.Tensor:
    """int64 [B]: argmax_j of the masked hinge costs [m + s_ij − s⁺_i]_+ (0 where masked).

    Ties go to the lowest index, so a row without a positive cost gives 0. Computed without
    materialising the costs: the hardest non-masked candidate when its cost is positive, else 0
    (equal to the argmax of the costs, save where distinct similarities round to one cost).
    sims [B, N], pos_sims [B] or [B, 1], mask bool [B, N].
    """
    return fallback_from_hardest(*hardest_negatives(sims, mask), pos_sims, margin)


def fallback_from_hardest(values: torch.Tensor, index: torch.Tensor, pos_sims: torch.Tensor,
                          margin: float) -> torch.Tensor:
    """:func:`fallback_index` from precomputed :func:`hardest_negatives` (values, index)."""
    return torch.where(margin + values - pos_sims.detach().reshape(-1) > 0, index, 0)


@dataclass
class SamplingWeights:
    """Unnormalised weights [B, N] and what the diagnostics read from them.

    Attributes:
        weights: float [B, N] ≥ 0, every row with a positive entry.
        posterior: float [B, N], the false-negative posterior P (computed even while the
            statistics are not ready; NaN where the reference numerics give NaN).
        keep: bool [B, N], candidates that survived the mask and the cut-down.
        empty: bool [B], rows that fell back to ``hardest_index``.
        ready: bool 0-d, whether the Gaussian term was in use (count > min_count).
    """

    weights: torch.Tensor
    posterior: torch.Tensor
    keep: torch.Tensor
    empty: torch.Tensor
    ready: torch.Tensor


def sampling_weights(sims: torch.Tensor, pos_sims: torch.Tensor, positive_mask: torch.Tensor,
                     stats: GaussianStats, hardest_index: torch.Tensor, *, margin: float = 0.2,
                     tau: float = 0.5, prior_ratio: float = 10000.0, false_margin: float = 0.999,
                     min_count: int = 200, reference_numerics: bool = False) -> SamplingWeights:
    """:func:`negative_sampling_weights` with the intermediate results kept (see there)."""
    dtype = compute_dtype(sims)
    s = sims.detach().to(dtype)
    pos = pos_sims.detach().reshape(-1, 1).to(dtype)
    ready = _stat(stats.count, s.device) > min_count
    if reference_numerics:
        posterior = reference_posterior(s, stats, prior_ratio)
        use_posterior = ((1 - posterior) < false_margin) & ready
    else:
        posterior = log_odds(s, stats, prior_ratio)
        threshold = (math.log((1 - false_margin) / false_margin) if false_margin < 1
                     else -math.inf)
        use_posterior = posterior > torch.where(ready, threshold, math.inf).to(dtype)
        posterior.sigmoid_()
    exponent = torch.sub(s, pos).square_()
    weights = torch.where(use_posterior, posterior, exponent, out=exponent).mul_(-tau).exp_()
    cut = _stat(stats.pos_mean, s.device).to(dtype) - margin  # in dtype, as the reference
    row_cut = torch.where(torch.isnan(pos), math.inf, cut)  # a NaN anchor admits nothing
    dropped = (s > row_cut).logical_not_().logical_or_(positive_mask)  # NaN s: dropped
    weights.masked_fill_(dropped, 0)
    empty = weights.sum(dim=1) == 0
    weights.scatter_add_(1, hardest_index.reshape(-1, 1), empty.to(dtype).reshape(-1, 1))
    keep = dropped.logical_not_()
    return SamplingWeights(weights, posterior, keep, empty, ready)


def negative_sampling_weights(sims: torch.Tensor, pos_sims: torch.Tensor,
                              positive_mask: torch.Tensor, stats: GaussianStats,
                              hardest_index: torch.Tensor, *, margin: float = 0.2,
                              tau: float = 0.5, prior_ratio: float = 10000.0,
                              false_margin: float = 0.999, min_count: int = 200,
                              reference_numerics: bool = False) -> torch.Tensor:
    """Unnormalised sampling weights [B, N] over the candidates of each anchor [ref].

    Args:
        sims: [B, N] anchor-to-candidate similarities (detached inside).
        pos_sims: [B] or [B, 1], each anchor's positive similarity s⁺.
        positive_mask: bool [B, N], candidates sharing the anchor's image id (never negatives).
        stats: ``pos_mean, pos_var, neg_mean, neg_var, count`` (floats or 0-d tensors).
        hardest_index: int64 [B], the column given weight 1 when a row ends all zero
            (:func:`fallback_index`).
        margin, tau, prior_ratio, false_margin, min_count: m, τ, R, γ, n_min of methods.md.
        reference_numerics: evaluate the posterior as the reference does (densities in the
            input dtype, NaN when both underflow) instead of the stable log-space form.

    Weights: w = exp(−τ (s − s⁺)²); when count > min_count and the posterior P > 1 − γ,
    w = exp(−τ P) instead; w = 0 on ``positive_mask`` and where s ≤ μ⁺ − m (cut-down, also
    before the statistics are ready); a row left all zero gets 1 at ``hardest_index``.
    Computed in at least float32, also under autocast.
    """
    return sampling_weights(sims, pos_sims, positive_mask, stats, hardest_index, margin=margin,
                            tau=tau, prior_ratio=prior_ratio, false_margin=false_margin,
                            min_count=min_count, reference_numerics=reference_numerics).weights


def draw_one_per_row(weights: torch.Tensor, generator: torch.Generator,
                     shard: Shard | None = None) -> torch.Tensor:
    """int64 [B]: one column per row of weights [B, N] (≥ 0, each row with a positive
    entry), drawn with probability proportional to the weight (multinomial semantics).

    Inverse CDF: running sums, one uniform per row, binary search. Same distribution as
    ``torch.multinomial(weights, 1)``, whose one-sample path draws B×N exponentials (on CPU
    ~15× the cost of this); probabilities are exact up to the rounding of the running sums
    in the weights' dtype, and a zero weight is never drawn. With ``shard`` (DDP), the rows
    are rows offset … offset + B − 1 of a global batch: ``generator`` (seeded alike on every
    rank) draws the uniforms of all ``shard.total`` rows and this rank uses its own, so the
    draws are those one process would make for the global batch.
    """
    cdf = weights.cumsum(dim=1)
    total = cdf[:, -1:]
    rows = shard.total if shard is not None else total.shape[0]
    u = torch.rand((rows, 1), generator=generator, device=weights.device, dtype=cdf.dtype)
    if shard is not None:
        u = u[shard.offset:shard.offset + shard.size]
    u = torch.minimum(u.mul_(total), torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def step_generator(seed: int, step: int, device: torch.device,
                   cached: torch.Generator | None = None, rank: int = 0) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, step), and the rank when not 0: draws
    repeat exactly after a resume. Reuses ``cached`` (re-seeded) when it lives on ``device``.
    """
    gen = cached if cached is not None and cached.device == device else torch.Generator(device)
    if rank == 0:
        return gen.manual_seed((seed << 32) + step)
    return gen.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(
        1, np.uint64)[0]))


@dataclass
class FNEParams:
    """Parameters of the FNE loss (``loss: {name: fne, ...}``); defaults are the reference's.

    Attributes:
        margin: triplet margin m, also the cut-down offset (similarity units).
        tau: τ of the kernel exp(−τ (s − s⁺)²) and of the false-negative weight exp(−τ P).
        prior_ratio: R; the prior probability that a candidate is positive is 1/R.
        false_margin: γ; the false-negative weight applies where 1 − P < γ.
        min_count: the Gaussians are used once more than this many positives were seen this
            epoch (strictly greater).
        queue_size: Q, memory slots of momentum features (any size ≥ 0; 0 = batch only).
        momentum: μ of the momentum copy's EMA.
        warmup_epochs: epochs of in-batch VSE++ before FNE sampling starts.
        warmup_id_mask: mask every same-image pair in the warm-up (the reference masks only
            the diagonal).
        exact_variance: exact (Chan) variance merge instead of the reference's approximation.
        reference_numerics: reproduce the reference's density underflow outcomes (NaN → kernel
            weight) instead of the stable log-space posterior.
        stats_source: ``inbatch`` = online in-batch B×B sims, mutual top-1 [ref]; ``pool`` =
            the momentum/queue sims the weights use, same-image masked [unverified].
        sampler: how a negative is drawn from the weights: ``inverse_cdf``
            (:func:`draw_one_per_row`, fast) or ``multinomial`` (``torch.multinomial``, the
            reference's call); the same distribution, different random streams.
        seed: base seed of the per-step sampling generator (and the queue's random start);
            null (default) uses the run's ``seed`` (the reference fixes 3407: set it for parity).
    """

    margin: float = 0.2
    tau: float = 0.5
    prior_ratio: float = 10000.0
    false_margin: float = 0.999
    min_count: int = 200
    queue_size: int = 8224
    momentum: float = 0.995
    warmup_epochs: int = 1
    warmup_id_mask: bool = False
    exact_variance: bool = False
    reference_numerics: bool = False
    stats_source: Literal["inbatch", "pool"] = "inbatch"
    sampler: Literal["inverse_cdf", "multinomial"] = "inverse_cdf"
    seed: int | None = None

    def validate(self, where: str) -> None:
        checks = [
            (self.margin >= 0, "margin", "must be non-negative"),
            (self.tau >= 0, "tau", "must be non-negative"),
            (self.prior_ratio > 1, "prior_ratio", "must be greater than 1"),
            (0 < self.false_margin <= 1, "false_margin", "must be in (0, 1]"),
            (self.min_count >= 0, "min_count", "must be non-negative"),
            (self.queue_size >= 0, "queue_size", "must be non-negative"),
            (0 <= self.momentum <= 1, "momentum", "must be in [0, 1]"),
            (self.warmup_epochs >= 0, "warmup_epochs", "must be non-negative"),
            (self.seed is None or 0 <= self.seed < 2**31, "seed", "must be in [0, 2**31)"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise VsekitError(f"{where}.{name} {rule}, got {getattr(self, name)}")

    def weight_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`sampling_weights`."""
        return {"margin": self.margin, "tau": self.tau, "prior_ratio": self.prior_ratio,
                "false_margin": self.false_margin, "min_count": self.min_count,
                "reference_numerics": self.reference_numerics}


@dataclass
class DirectionDraw:
    """One direction of one FNE step.

    Attributes:
        hinge: 0-d live sum over anchors of [m + s_{i,n_i} − s⁺_i]_+ (0 for masked draws).
        index: int64 [B], the drawn pool column per anchor.
        drawn_masked: bool [B], the draw shares the anchor's image id (fallback only).
        weights: the :class:`SamplingWeights` it was drawn from.
    """

    hinge: torch.Tensor
    index: torch.Tensor
    drawn_masked: torch.Tensor
    weights: SamplingWeights


@dataclass
class FNEStep:
    """Result of :func:`fne_loss_path`: the loss, the draws (i2t, t2i) and diagnostics."""

    loss: torch.Tensor
    i2t: DirectionDraw
    t2i: DirectionDraw
    diagnostics: dict[str, torch.Tensor]


def _draw(sims: torch.Tensor, anchors: torch.Tensor, pool: torch.Tensor, mask: torch.Tensor,
          fallback: torch.Tensor, stats: SimilarityStats, params: FNEParams,
          generator: torch.Generator, shard: Shard) -> DirectionDraw:
    """Weights, one draw per row, and the live hinge of the drawn negatives.

    sims [B, N] detached; anchors [B, D] live; pool [N, D] (row shard.offset + i = anchor
    i's positive). Only the 2·B similarities the hinge needs are recomputed with gradient,
    so the backward pass never touches a B×N matrix.
    """
    found = sampling_weights(sims, own_columns(sims, shard), mask, stats, fallback,
                             **params.weight_kwargs())
    if params.sampler == "multinomial":
        index = torch.multinomial(found.weights, 1, generator=generator).squeeze(1)
    else:
        index = draw_one_per_row(found.weights, generator, shard)
    anchors = anchors.to(pool.dtype)
    drawn = (anchors * pool[index]).sum(dim=1)
    positive = (anchors * pool[shard.offset:shard.offset + shard.size]).sum(dim=1)
    masked = mask.gather(1, index[:, None]).squeeze(1)
    hinge = torch.where(masked, 0, torch.relu(params.margin + drawn - positive)).sum()
    return DirectionDraw(hinge, index, masked, found)


def own_columns(sims: torch.Tensor, shard: Shard) -> torch.Tensor:
    """[B]: sims[i, shard.offset + i], each anchor's similarity to its own pair (a view)."""
    return sims.narrow(1, shard.offset, shard.size).diagonal()


def _step_diagnostics(draws: list[DirectionDraw], stats: SimilarityStats
                      ) -> dict[str, torch.Tensor]:
    """Detached 0-d float32 tensors summarising both directions' draws (no host sync)."""
    weights = [d.weights for d in draws]
    ready = weights[0].ready.float()
    kept = torch.stack([w.keep.count_nonzero() for w in weights]).sum().float()
    likely = torch.stack([(w.posterior > 0.5).logical_and_(w.keep).count_nonzero()
                          for w in weights]).sum()
    drawn_p = torch.cat([w.posterior.gather(1, d.index[:, None]).squeeze(1)
                         for w, d in zip(weights, draws, strict=True)])
    rows = sum(d.index.shape[0] for d in draws)
    values = {
        "fne_candidates": kept / rows,
        "fne_fallback": torch.cat([w.empty for w in weights]).float().mean(),
        "fne_sampled_p": drawn_p.nan_to_num(0.0).float().mean() * ready,
        "fne_same_id": torch.cat([d.drawn_masked for d in draws]).float().mean(),
        "fne_p_over_half": likely.float() / kept.clamp(min=1) * ready,
        "fne_ready": ready,
        **stats.diagnostics(),
    }
    return {k: v.detach().float() for k, v in values.items()}


@dataclass
class Pools:
    """Candidate pools of one step: momentum features of this batch, then the queue.

    Attributes:
        image: [N, D] image candidates (t2i); caption: [N, D] caption candidates (i2t). Row i
            < B is pair i of the batch, so anchor i's positive is row i.
    """

    image: torch.Tensor
    caption: torch.Tensor


def fne_loss_path(inbatch_sims: torch.Tensor | None, image_emb: torch.Tensor,
                  text_emb: torch.Tensor, pools: Pools, mask: torch.Tensor,
                  stats: SimilarityStats, params: FNEParams, generator: torch.Generator, *,
                  inbatch_t2i: torch.Tensor | None = None, shard: Shard | None = None
                  ) -> FNEStep:
    """One FNE step from the embeddings: pool similarities, statistics update, weights, draws,
    hinge (methods.md §1.5 steps 3-5).

    Args:
        inbatch_sims: [B, B] online image × online caption sims, the in-batch statistics'
            source (detached here); under DDP the image anchors' rows [B, W·B] against every
            rank's captions, with ``inbatch_t2i`` the caption anchors' rows. Unused (may be
            None) with ``stats_source: pool``.
        image_emb, text_emb: [B, D] live online embeddings (the anchors; gradient flows here).
        pools: the momentum candidates, N rows each: the global batch, then the queue.
        mask: bool [B, N], pool entries sharing the anchor's image id (both directions).
        stats: updated in place before the weights use it.
        params: the loss parameters; generator: the draws' random source.
        shard: where this rank's anchors sit in the global batch (default: one process);
            anchor i's positive is pool row shard.offset + i.

    S_i2t = image_emb · pools.captionᵀ and S_t2i = text_emb · pools.imageᵀ are computed once,
    detached, in at least float32 (also under autocast). Returns the loss
    L = (Σ_i hinge_i2t + hinge_t2i) / B, the draws and diagnostics; under DDP L is this
    rank's share (B is the local batch), and the ranks' average is the global loss.
    """
    batch = image_emb.shape[0]
    shard = shard or Shard(0, batch, batch)
    anchors = [image_emb, text_emb]
    pool = [pools.caption, pools.image]
    dtype = torch.promote_types(torch.promote_types(image_emb.dtype, pools.image.dtype),
                                torch.float32)
    with torch.no_grad(), torch.autocast(device_type=image_emb.device.type, enabled=False):
        pool = [p.to(dtype) for p in pool]
        sims = [a.to(dtype) @ p.T for a, p in zip(anchors, pool, strict=True)]
    hardest = [hardest_negatives(s, mask) for s in sims]
    positives = [own_columns(s, shard) for s in sims]
    if params.stats_source == "inbatch":
        columns = torch.arange(shard.offset, shard.offset + batch, device=image_emb.device)
        t2i = None if inbatch_t2i is None else inbatch_t2i.detach()
        stats.update(inbatch_observations(inbatch_sims.detach(), t2i, columns))
    else:
        stats.update(pool_observations(positives[0], hardest[0].values,
                                       positives[1], hardest[1].values))
    draws = []
    for s, a, p, (values, index), pos in zip(sims, anchors, pool, hardest, positives,
                                             strict=True):
        fallback = fallback_from_hardest(values, index, pos, params.margin)
        draws.append(_draw(s, a, p, mask, fallback, stats, params, generator, shard))
    loss = (draws[0].hinge + draws[1].hinge) / batch
    return FNEStep(loss, draws[0], draws[1], _step_diagnostics(draws, stats))


# --------------------------------------------------------------------------- module


@dataclass
class Picks:
    """The negatives chosen in one direction of the last step, for diagnostics.

    Attributes:
        index: int64 [B], column in the candidate pool (batch first, then queue slots).
        image_index, caption_index: int64 [B], the split rows of the chosen pool entry's pair
            (−1 for queue slots never written). For i2t the candidate is that pair's caption,
            for t2i its image.
    """

    index: torch.Tensor
    image_index: torch.Tensor
    caption_index: torch.Tensor


def _require(value: Any, name: str) -> Any:
    if value is None:
        raise VsekitError(f"the fne loss needs the {name}= argument; call it as the vsekit "
                          "trainer does: loss(img, txt, ids, epoch=, step=, batch=, model=)")
    return value


@dataclass
class PendingUpdate:
    """The state changes of the last FNE call, applied by :meth:`FNELoss.commit_step`.

    Attributes:
        model: the online model the momentum copy follows.
        moments: the similarity statistics after the step (None in the warm-up: unchanged).
        enqueue: (image features, caption features, ids, image_index, caption_index) of the
            global batch, for :meth:`MemoryQueue.write` (None in the warm-up).
        buffers: the momentum copy's buffers after its forward pass (BatchNorm running
            statistics; empty in the warm-up, which runs no momentum forward).
    """

    model: nn.Module
    moments: torch.Tensor | None = None
    enqueue: tuple[torch.Tensor, ...] | None = None
    buffers: list[torch.Tensor] = field(default_factory=list)


@LOSSES.register("fne", FNEParams)
class FNELoss(nn.Module):
    """FNE (false negative elimination): sampled negatives from a momentum memory queue.

    Lifecycle (the vsekit trainer drives it): ``bind(model=, config=)`` once, which makes the
    momentum copy and the queue (both part of ``state_dict``); ``on_epoch_start(epoch)``
    resets the statistics; each call ``loss(img, txt, ids, epoch=, step=, batch=, model=)``
    computes a step *without changing any state*; ``commit_step()``, which the trainer calls
    once it has applied the step's optimiser update, then writes the step's statistics, its
    enqueue, the momentum copy's buffers (BatchNorm statistics) and the momentum update. A step the trainer skips (non-finite loss or gradient)
    is never committed, so it leaves queue, statistics and momentum weights untouched.

    The order is the reference's: momentum update, momentum features, similarities and mask,
    statistics update, weights/draw/loss, enqueue. The momentum update that the reference
    makes at the start of step t+1 is made at the commit of step t, right after the
    optimiser step: the online weights do not change in between, so it is the same update
    (and the first step's, on a fresh copy, is the identity). During the first
    ``warmup_epochs`` the loss is in-batch VSE++ instead (the momentum update still runs; no
    statistics, no enqueue).

    Under DDP every rank computes its own anchors against the global batch's momentum
    features plus the queue; momentum features and ids are gathered before they enter the
    queue (every rank's queue is identical) and the statistics are merged by an all-reduce of
    sums and counts (identical on all ranks). The ``inverse_cdf`` sampler draws the global
    batch's uniforms on every rank and uses its own rows, so the draws are those of one
    process; ``multinomial`` seeds its generator per (seed, step, rank).

    After each call ``last_picks`` holds the chosen negatives per direction (``"i2t"``,
    ``"t2i"``: :class:`Picks`; in the warm-up, the in-batch hardest negatives).
    """

    momentum_model: nn.Module | None
    queue: MemoryQueue | None

    def __init__(self, params: FNEParams, **_context: Any) -> None:
        super().__init__()
        self.params = params
        self.stats = SimilarityStats(exact_variance=params.exact_variance)
        self.momentum_model = None
        self.queue = None
        self.last_picks: dict[str, Picks] = {}
        self._generator: torch.Generator | None = None
        self._pending: PendingUpdate | None = None

    def bind(self, model: nn.Module, config: Any = None, **_context: Any) -> None:
        """Create the momentum copy of ``model`` and the queue (D = ``config.model.embed_dim``)."""
        if config is None:
            raise VsekitError("the fne loss needs the run config to size its queue; call "
                              "loss.bind(model=model, config=config)")
        if self.params.seed is None:  # follow the run's seed (the reference fixes 3407)
            self.params.seed = config.seed % 2**31
        self.momentum_model = momentum_copy(model)
        self.queue = MemoryQueue(self.params.queue_size, config.model.embed_dim,
                                 seed=self.params.seed).to(self.stats.moments.device)

    def on_epoch_start(self, epoch: int) -> None:
        """Reset the similarity statistics (they are per epoch [ref])."""
        self.stats.reset()

    @torch.no_grad()
    def commit_step(self) -> None:
        """Apply the last call's state changes: statistics, enqueue, then the momentum update.
        No-op when there is nothing to commit (no host sync)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.moments is not None:
            self.stats.moments.copy_(pending.moments)
        if pending.enqueue is not None:
            self.queue.write(*pending.enqueue)
        if pending.buffers:  # (none in the warm-up)
            for buffer, value in zip(self.momentum_model.buffers(), pending.buffers, strict=True):
                buffer.copy_(value)
        ema_update_(self.momentum_model, pending.model, self.params.momentum)

    @torch.no_grad()
    def _momentum_features(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, ...]:
        """The momentum copy's features of ``batch`` (in the online model's mode). Buffers the
        forward pass updates (e.g. BatchNorm running statistics) are restored at once and
        their new values kept for the commit."""
        self.momentum_model.train(model.training)
        buffers = list(self.momentum_model.buffers())
        saved = [b.clone() for b in buffers]
        features = self.momentum_model(batch)
        self._pending.buffers = [b.clone() for b in buffers]
        for buffer, value in zip(buffers, saved, strict=True):
            buffer.copy_(value)
        return features

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_ids: torch.Tensor,
                *, epoch: int | None = None, step: int | None = None, batch: Any = None,
                model: nn.Module | None = None, pairs: PairSims | None = None,
                **_context: Any) -> LossOutput:
        """Loss of a batch: image_emb, text_emb [B, D] (normalised), image_ids int64 [B].

        ``pairs``: the batch's :class:`PairSims` if the caller already built them (``bcls``).
        """
        if self.momentum_model is None or self.queue is None:
            raise VsekitError("the fne loss is not bound to a model; call "
                              "loss.bind(model=model, config=config) before training")
        epoch = _require(epoch, "epoch")
        self._pending = PendingUpdate(_require(model, "model"))
        if epoch < self.params.warmup_epochs:
            return self._warmup(image_emb, text_emb, image_ids, batch, pairs)
        return self._fne(image_emb, text_emb, image_ids, _require(step, "step"),
                         _require(batch, "batch"), model, pairs)

    def _warmup(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_ids: torch.Tensor,
                batch: Any, pairs: PairSims | None) -> LossOutput:
        pairs = context_pairs(image_emb, text_emb, image_ids, pairs)
        mask = pairs.exclusion(self.params.warmup_id_mask)
        cost_i2t, cost_t2i = pair_hinges(pairs, mask, self.params.margin)
        loss = reduce_anchors(pooled_hinges(cost_i2t, cost_t2i, "max"), "mean")
        if batch is not None:
            image_index, caption_index = distributed.gather_many(batch.image_index,
                                                                 batch.caption_index)
            self._record_picks(cost_i2t.detach().argmax(dim=1), cost_t2i.detach().argmax(dim=1),
                               image_index, caption_index)
        return LossOutput(loss, similarity_diagnostics(pairs, mask))

    def _fne(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_ids: torch.Tensor,
             step: int, batch: Any, model: nn.Module, pairs: PairSims | None) -> LossOutput:
        check_batch(image_emb, text_emb, image_ids)
        queue = self.queue
        if image_emb.shape[1] != queue.dim:
            raise VsekitError(f"the fne queue holds {queue.dim}-d features but the model "
                              f"outputs {image_emb.shape[1]}-d; set model.embed_dim to "
                              f"{image_emb.shape[1]}")
        inbatch = None
        if self.params.stats_source == "inbatch":  # the online in-batch sims, detached
            inbatch = pairs or pair_similarities(image_emb.detach(), text_emb.detach(),
                                                 image_ids)
        image_m, text_m = distributed.gather_many(*self._momentum_features(model, batch))
        ids, image_index, caption_index = distributed.gather_many(
            image_ids, batch.image_index, batch.caption_index)
        pools = Pools(image=torch.cat([image_m.to(queue.image.dtype), queue.image]),
                      caption=torch.cat([text_m.to(queue.text.dtype), queue.text]))
        mask = same_image_mask(image_ids, torch.cat([ids, queue.ids]))
        rank = distributed.rank() if self.params.sampler == "multinomial" else 0
        self._generator = step_generator(self.params.seed, step, image_emb.device,
                                         self._generator, rank)
        stats = self.stats.fork()
        result = fne_loss_path(
            None if inbatch is None else inbatch.i2t, image_emb, text_emb, pools, mask, stats,
            self.params, self._generator,
            inbatch_t2i=None if inbatch is None or inbatch.shared else inbatch.t2i,
            shard=distributed.local_shard(image_emb.shape[0]))
        self._record_picks(result.i2t.index, result.t2i.index,
                           torch.cat([image_index, queue.image_index]),
                           torch.cat([caption_index, queue.caption_index]))
        self._pending.moments = stats.moments
        self._pending.enqueue = (image_m, text_m, ids, image_index, caption_index)
        return LossOutput(result.loss, result.diagnostics)

    def _record_picks(self, i2t: torch.Tensor, t2i: torch.Tensor, image_index: torch.Tensor,
                      caption_index: torch.Tensor) -> None:
        self.last_picks = {name: Picks(index, image_index[index], caption_index[index])
                           for name, index in (("i2t", i2t), ("t2i", t2i))}
