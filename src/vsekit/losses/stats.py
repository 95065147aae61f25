"""Running statistics of positive and hardest-negative similarities (FNE, methods.md §1.3).

FNE models the similarity of a positive pair and of a hard negative as two 1-D Gaussians. Their
means and variances are running statistics over the epoch, collected from pairs that are top-1
in both directions (the pair is probably clean). :class:`SimilarityStats` keeps raw sums as one
buffer, so it is checkpointed, and each batch's sums are summed across ranks (``reduce``,
an all-reduce under DDP), so every rank holds the statistics of the global batch.

Similarities are dot products of unit vectors (cosines, unitless). Everything here is tensor
math without host syncs: qualifying pairs are boolean masks, never Python branches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vsekit import distributed

# Columns of SimilarityStats.moments; rows are POSITIVE and NEGATIVE.
COUNT, SUM, SQUARES = 0, 1, 2
POSITIVE, NEGATIVE = 0, 1


@dataclass
class Observations:
    """Similarity values offered to the statistics, with masks of those that count.

    Attributes:
        pos: [K] positive similarities; pos_valid: bool [K].
        neg: [L] hardest-negative similarities; neg_valid: bool [L].
    """

    pos: torch.Tensor
    pos_valid: torch.Tensor
    neg: torch.Tensor
    neg_valid: torch.Tensor


def _rows(sims: torch.Tensor, t2i: torch.Tensor | None, positive: torch.Tensor | None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i2t rows, t2i rows, positive columns): one process's defaults are sims.T and 0…B−1."""
    if positive is None:
        positive = torch.arange(sims.shape[0], device=sims.device)
    return sims, (sims.T if t2i is None else t2i), positive


def mutual_top1(sims: torch.Tensor, t2i: torch.Tensor | None = None,
                positive: torch.Tensor | None = None) -> torch.Tensor:
    """bool [B]: pair i is top-1 of its image's row and of its caption's row.

    ``sims`` [B, N] are the image anchors' rows (one process: the B×B matrix), ``t2i``
    [B, N] the caption anchors' rows (default ``sims.T``), ``positive`` [B] each anchor's own
    column (default 0…B−1; rank·B + i under DDP). argmax semantics (ties go to the lowest
    index), as methods.md §1.10 asks; the reference sorts, which orders exact ties
    arbitrarily.
    """
    i2t, t2i, positive = _rows(sims, t2i, positive)
    return (i2t.argmax(dim=1) == positive) & (t2i.argmax(dim=1) == positive)


def hardest_zero_diagonal(sims: torch.Tensor, t2i: torch.Tensor | None = None,
                          positive: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest in-batch negatives (i2t [B], t2i [B]), the reference's way (rows as in
    :func:`mutual_top1`).

    The own pair is set to 0 before the max (only it is excluded, not other pairs of the
    same image), so a row whose other values are all below 0 yields 0 [ref].
    """
    i2t, t2i, positive = _rows(sims, t2i, positive)
    columns = torch.arange(i2t.shape[1], device=i2t.device)
    own = columns[None, :] == positive[:, None]
    return tuple(rows.masked_fill(own, 0).max(dim=1).values  # type: ignore[return-value]
                 for rows in (i2t, t2i))


def hardest_negatives(sims: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [B], index [B]) of the largest non-masked entry per row of sims [B, N].

    A row with every entry masked gives (-inf, 0). Ties go to the lowest index.
    """
    return sims.masked_fill(mask, float("-inf")).max(dim=1)


def inbatch_observations(sims: torch.Tensor, t2i: torch.Tensor | None = None,
                         positive: torch.Tensor | None = None) -> Observations:
    """What the reference adds from the online in-batch similarities (rows as in
    :func:`mutual_top1`; one process: the image × caption matrix sims [B, B]).

    For every mutually top-1 pair i: its positive, and the two hardest negatives (its
    image's row and its caption's row, own pair zeroed before the max) [ref].
    """
    i2t, t2i, positive = _rows(sims, t2i, positive)
    qualifies = mutual_top1(i2t, t2i, positive)
    h_i2t, h_t2i = hardest_zero_diagonal(i2t, t2i, positive)
    return Observations(pos=i2t.gather(1, positive[:, None]).squeeze(1), pos_valid=qualifies,
                        neg=torch.cat([h_i2t, h_t2i]), neg_valid=torch.cat([qualifies, qualifies]))


def pool_observations(pos_i2t: torch.Tensor, hard_i2t: torch.Tensor,
                      pos_t2i: torch.Tensor, hard_t2i: torch.Tensor) -> Observations:
    """The ``stats_source: pool`` option [unverified]: statistics from the sims the weights use.

    Inputs are [B] each: the positive similarity of every anchor against its own momentum
    pair, and its hardest same-image-masked negative over the pool (batch + queue), per
    direction. Pair i qualifies when its positive beats every negative in both directions;
    it then adds both positives and both hardest negatives (so n⁺ grows by 2 per pair).
    """
    qualifies = (pos_i2t > hard_i2t) & (pos_t2i > hard_t2i)
    negatives = torch.cat([hard_i2t, hard_t2i])
    both = torch.cat([qualifies, qualifies])
    return Observations(pos=torch.cat([pos_i2t, pos_t2i]), pos_valid=both,
                        neg=negatives, neg_valid=both & torch.isfinite(negatives))


class SimilarityStats(nn.Module):
    """Running mean and variance of positive and negative similarities since the last reset.

    The buffer ``moments`` (float64 [2, 3]) holds, for positives (row 0) and negatives (row 1):
    the count n, the sum Σx, and a sum of squared deviations S2. Means are Σx / n (0 while
    n = 0); variances are S2 / (n − 1) (0 while n ≤ 1).

    S2 follows the reference by default: each batch first folds its values into the mean, then
    adds Σ (x − mean_after_batch)² over the batch's values; this is *not* the exact sample
    variance [ref]. ``exact_variance=True`` merges batches exactly instead (Chan et al.: S2 is
    then the sum of squared deviations from the current mean).

    ``reduce`` maps a tensor of per-batch sums to its sum over ranks (identity on one process;
    an all-reduce under DDP), so every rank holds the same statistics.
    """

    moments: torch.Tensor

    def __init__(self, exact_variance: bool = False, reduce: Callable[[torch.Tensor], torch.Tensor]
                 = distributed.all_reduce_sum) -> None:
        super().__init__()
        self.exact_variance = exact_variance
        self.reduce = reduce
        self.register_buffer("moments", torch.zeros(2, 3, dtype=torch.float64))

    def reset(self) -> None:
        """Forget everything (start of an epoch)."""
        self.moments.zero_()

    def fork(self) -> SimilarityStats:
        """An independent copy (same options and reduce hook) whose updates leave this one
        untouched: FNE updates a fork during a step and commits it only if the step is kept."""
        copy = SimilarityStats(self.exact_variance, self.reduce)
        copy.moments = self.moments.clone()
        return copy

    @torch.no_grad()
    def update(self, obs: Observations) -> None:
        """Fold one batch of observations in (detached; no host sync)."""
        kinds = [(x, m & torch.isfinite(x)) for x, m in ((obs.pos.detach(), obs.pos_valid),
                                                         (obs.neg.detach(), obs.neg_valid))]
        weights = [m.to(self.moments.device, torch.float64) for _, m in kinds]
        values = [torch.where(m, x, 0).to(self.moments.device, torch.float64)  # drop NaN/inf
                  for x, m in kinds]
        batch = self.reduce(torch.stack([torch.stack([w.sum(), (w * x).sum()])
                                         for x, w in zip(values, weights, strict=True)]))
        old_n, old_sum = self.moments[:, COUNT], self.moments[:, SUM]
        new_n, new_sum = old_n + batch[:, 0], old_sum + batch[:, 1]
        if self.exact_variance:
            centre = batch[:, 1] / batch[:, 0].clamp(min=1)
        else:
            centre = new_sum / new_n.clamp(min=1)
        squares = self.reduce(torch.stack([(w * (x - c) ** 2).sum() for x, w, c
                                           in zip(values, weights, centre, strict=True)]))
        if self.exact_variance:
            old_mean = old_sum / old_n.clamp(min=1)
            shift = (centre - old_mean) ** 2 * old_n * batch[:, 0] / new_n.clamp(min=1)
            squares = squares + shift
        self.moments[:, COUNT] = new_n
        self.moments[:, SUM] = new_sum
        self.moments[:, SQUARES] += squares

    def _mean(self, row: int) -> torch.Tensor:
        return self.moments[row, SUM] / self.moments[row, COUNT].clamp(min=1)

    def _var(self, row: int) -> torch.Tensor:
        return self.moments[row, SQUARES] / (self.moments[row, COUNT] - 1).clamp(min=1)

    @property
    def count(self) -> torch.Tensor:
        """0-d: number of positive values since the reset (n⁺)."""
        return self.moments[POSITIVE, COUNT]

    @property
    def pos_mean(self) -> torch.Tensor:
        """0-d: mean positive similarity μ⁺ (0 before any value)."""
        return self._mean(POSITIVE)

    @property
    def pos_var(self) -> torch.Tensor:
        """0-d: positive variance σ⁺² (see the class docstring for which estimate)."""
        return self._var(POSITIVE)

    @property
    def neg_mean(self) -> torch.Tensor:
        """0-d: mean hardest-negative similarity μ⁻."""
        return self._mean(NEGATIVE)

    @property
    def neg_var(self) -> torch.Tensor:
        """0-d: negative variance σ⁻²."""
        return self._var(NEGATIVE)

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Detached 0-d float32 tensors: pos/neg mean and std."""
        values = {"pos_mean": self.pos_mean, "pos_std": self.pos_var.sqrt(),
                  "neg_mean": self.neg_mean, "neg_std": self.neg_var.sqrt()}
        return {k: v.detach().float() for k, v in values.items()}
