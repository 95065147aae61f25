"""BCLS: binary and continuous label supervision (Triplet-SN + Kendall rank loss with SW-HS).

Methods spec §2. The paper's formulas could not be checked; everything here except the idea
is a documented reconstruction, and every [unverified] choice is a parameter:

- :func:`triplet_sn_loss` — triplet loss with soft negative mining [unverified]: each
  admissible negative's hinge weighted by a softmax of its similarity / tau (weights detached
  by default). :func:`triplet_lse_loss` is the smooth sibling (``form: lse``), the first
  author's ``UnifiedLoss`` in MV-VSE [related].
- :func:`kendall_rank_loss` — hinge (or tanh) surrogate of Kendall's tau between the model's
  scores and continuous pseudo labels [unverified], on all label-ordered pairs (``"all"``,
  chunked) or on SW-HS pairs (``"swhs"``: per candidate, the highest-scoring less relevant
  candidate of a sliding window in label order) in O(Q·N·log N) time and O(Q·N) memory.
- ``triplet_sn`` and ``bcls`` losses for configs. ``bcls`` = base + λ·(Kendall i2t + Kendall
  t2i)/2 on the in-batch similarity matrix, where the base is Triplet-SN or any registered
  loss; pseudo labels come from cached caption embeddings (:mod:`vsekit.labels`). The t2i
  term uses the *transpose* of the [image, caption] label matrix (the authors' related code
  reuses the i2t rows for t2i; vsekit does not).

Matrices are "rows are queries": ``sims``/``scores`` [Q, N] hold the similarity of query q
to candidate n (cosine units); ``labels`` [Q, N] the candidates' relevance to the query.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vsekit import distributed
from vsekit.errors import VsekitError, require
from vsekit.labels.continuous import (
    caption_table,
    labels_from_table,
    load_cache,
    load_or_build_cache,
)
from vsekit.losses.base import LOSSES, LossOutput
from vsekit.losses.ranking import (
    PairSims,
    context_pairs,
    pair_similarities,
    similarity_diagnostics,
)
from vsekit.registry import parse_dataclass

Form = Literal["hinge", "lse"]
KendallMode = Literal["swhs", "all"]
Surrogate = Literal["hinge", "tanh"]
DEFAULT_TAU = {"hinge": 0.1, "lse": 0.01}  # project choice / MV-VSE UnifiedLoss [related]
PAIR_CHUNK_ELEMENTS = 1 << 22  # bound on one [rows, N, N] block of mode "all"

# --------------------------------------------------------------------------- Triplet-SN


def _check_rows(sims: torch.Tensor, positive_index: torch.Tensor,
                positive_mask: torch.Tensor) -> None:
    require(sims.ndim == 2, f"sims must be a [Q, N] matrix, got shape {tuple(sims.shape)}")
    require(positive_index.shape == (sims.shape[0],),
            f"positive_index must have shape [Q] = [{sims.shape[0]}], got "
            f"{tuple(positive_index.shape)}; pass one positive column per query")
    require(positive_mask.shape == sims.shape and positive_mask.dtype == torch.bool,
            f"positive_mask must be a bool matrix of the shape of sims {tuple(sims.shape)}, got "
            f"{positive_mask.dtype} {tuple(positive_mask.shape)}")


def _positive_hinges(sims: torch.Tensor, positive_index: torch.Tensor, margin: float
                     ) -> torch.Tensor:
    """[Q, N]: margin + s_qn − s_q,pos (before the hinge)."""
    return margin + sims - sims.gather(1, positive_index.long()[:, None])


def triplet_sn_loss(sims: torch.Tensor, positive_index: torch.Tensor,
                    positive_mask: torch.Tensor, *, margin: float = 0.2, tau: float = 0.1,
                    grad_through_weights: bool = False) -> torch.Tensor:
    """Triplet loss with soft negative mining (Triplet-SN) [unverified], scalar.

    Row q: Σ over admissible j (``~positive_mask[q]``) of w_qj · [margin + s_qj − s_q,pos]_+,
    with w_q = softmax over the admissible j of s_qj / tau, detached unless
    ``grad_through_weights``. Rows without an admissible negative contribute 0; the result is
    the mean over the Q rows. tau → 0: the VSE++ hardest-negative hinge; tau → ∞: the mean
    hinge over admissible negatives.

    Args:
        sims: float [Q, N] query × candidate similarities.
        positive_index: int [Q], column of each query's own positive.
        positive_mask: bool [Q, N], True for every column that may not be a negative (the
            positive and every other item of the query's image).
    """
    _check_rows(sims, positive_index, positive_mask)
    hinge = torch.relu(_positive_hinges(sims, positive_index, margin))
    hinge = hinge.masked_fill(positive_mask, 0)
    logits = (sims if grad_through_weights else sims.detach()) / tau
    # finfo.min, not -inf: a row with no admissible column stays finite (its hinges are 0).
    weights = torch.softmax(logits.masked_fill(positive_mask, torch.finfo(logits.dtype).min), 1)
    return (weights * hinge).sum() / max(sims.shape[0], 1)


def triplet_lse_loss(sims: torch.Tensor, positive_index: torch.Tensor,
                     positive_mask: torch.Tensor, *, margin: float = 0.2,
                     tau: float = 0.01) -> torch.Tensor:
    """Log-sum-exp Triplet-SN (``form: lse``; MV-VSE ``UnifiedLoss`` [related]), scalar.

    Row q: tau · log(1 + Σ over admissible j of exp((margin + s_qj − s_q,pos) / tau)); mean
    over rows (rows without admissible negatives give 0). Its gradient weights each negative
    by a softmax of its margin-shifted similarity (no stop-gradient). tau → 0: the VSE++
    hinge. As tau grows the gradient weights become uniform but the value grows like
    tau · log(1 + n), so unlike :func:`triplet_sn_loss` it does not tend to the mean hinge.
    Shapes as in :func:`triplet_sn_loss`.
    """
    _check_rows(sims, positive_index, positive_mask)
    x = (_positive_hinges(sims, positive_index, margin) / tau).masked_fill(positive_mask,
                                                                          float("-inf"))
    x = torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)  # the "1 +" term
    return tau * torch.logsumexp(x, dim=1).sum() / max(sims.shape[0], 1)


# --------------------------------------------------------------------------- Kendall rank loss


def pair_cost(high: torch.Tensor, low: torch.Tensor, *, delta: float, surrogate: Surrogate,
              temperature: float) -> torch.Tensor:
    """Cost of a label-ordered pair (label of ``high`` > label of ``low``), elementwise.

    ``"hinge"``: [s_low − s_high + delta]_+; ``"tanh"``: 1 − tanh((s_high − s_low − delta) / T).
    Both are 0 (hinge) or small (tanh) when the more relevant candidate scores higher.
    """
    if surrogate == "hinge":
        return torch.relu(low - high + delta if delta else low - high)
    return 1 - torch.tanh((high - low - delta) / temperature)


def _pair_block(scores: torch.Tensor, labels: torch.Tensor, *, label_gap: float, delta: float,
                surrogate: Surrogate, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs of a block of rows: (Σ of pair costs [q], number of eligible pairs [q])."""
    eligible = labels[:, None, :] < labels[:, :, None] - label_gap  # [q, a, b]: y_b < y_a − g
    cost = pair_cost(scores[:, :, None], scores[:, None, :], delta=delta, surrogate=surrogate,
                     temperature=temperature)
    return cost.where(eligible, 0).sum((1, 2)), eligible.sum((1, 2))


def _all_pair_rows(scores: torch.Tensor, labels: torch.Tensor, **options: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mode "all" per row, in blocks of rows; each block is recomputed in backward
    (activation checkpointing), so memory stays O(PAIR_CHUNK_ELEMENTS + Q·N)."""
    n = scores.shape[1]
    rows = max(1, PAIR_CHUNK_ELEMENTS // max(1, n * n))
    block = functools.partial(_pair_block, **options)
    sums, counts = [], []
    for start in range(0, scores.shape[0], rows):
        s, y = scores[start:start + rows], labels[start:start + rows]
        part = (checkpoint(block, s, y, use_reentrant=False) if s.requires_grad
                else block(s, y))
        sums.append(part[0])
        counts.append(part[1])
    return torch.cat(sums), torch.cat(counts)


def _ascending_order(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates by label ascending, ties in reverse column order: the exact reverse of the
    stable descending order that defines SW-HS. Returns (sorted labels, their columns) [Q, N].

    Working in this order turns "later in the descending order" into "earlier", so the SW-HS
    suffix maximum becomes a prefix maximum (a forward cummax). Sorting the column-flipped
    labels stably gives the reversed tie order.
    """
    n = labels.shape[1]
    sorted_labels, flipped_columns = torch.sort(labels.flip(1), dim=1, stable=True)
    return sorted_labels, n - 1 - flipped_columns


def _lower_count(sorted_labels: torch.Tensor, label_gap: float) -> torch.Tensor:
    """int64 [Q, N]: for ascending position r, how many candidates p satisfy
    y_p < y_r − label_gap; they are exactly positions 0 … count − 1.

    Gap 0: the start of r's tie group (a cumulative max, O(N) per row). Gap > 0: binary
    search for y_r − gap, with the rounding of the reference predicate (O(N log N)).
    """
    if label_gap:  # (rows of transposed labels sort into strided tensors)
        sorted_labels = sorted_labels.contiguous()
        return torch.searchsorted(sorted_labels, sorted_labels - label_gap)
    n = sorted_labels.shape[1]
    previous = torch.nn.functional.pad(sorted_labels, (1, 0), value=float("nan"))[:, :-1]
    position = torch.arange(n, device=sorted_labels.device)
    # NaN ≠ y, so position 0 starts a group; carry each group's start forward.
    return torch.cummax(torch.where(sorted_labels != previous, position, 0), dim=1).values


def _range_argmax(values: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                  max_length: int) -> torch.Tensor:
    """Range argmax: for ``values`` [Q, N] and int64 ``start``, ``end`` [Q, M], the int64
    [Q, M] position of the max of values[q, start:end+1], the highest position on ties.

    Sparse-table doubling: level j holds the argmax over [p, p + 2^j); a range of length
    L ∈ [2^j, 2^(j+1)) is the union of two level-j blocks. Only the current level is kept:
    O(Q·(N + M)·log max_length) time, O(Q·(N + M)) memory. Requires
    0 ≤ start ≤ end ≤ N − 1 and end − start + 1 ≤ max_length.
    """
    q, n = values.shape
    max_length = min(max_length, n)
    length = end - start + 1
    best = end.clone()
    level_val, level_idx = values, torch.arange(n, device=values.device).expand(q, n)
    width = 1
    while 2 * width <= max_length:
        pad_val = torch.full((q, width), float("-inf"), dtype=values.dtype, device=values.device)
        right_val = torch.cat([level_val[:, width:], pad_val], 1)
        right_idx = torch.cat([level_idx[:, width:], level_idx[:, -width:]], 1)
        take_right = right_val >= level_val  # ties go to the right (higher) position
        level_val = torch.where(take_right, right_val, level_val)
        level_idx = torch.where(take_right, right_idx, level_idx)
        width *= 2
        at_level = (length >= width) & (length < 2 * width)
        right = (end - width + 1).clamp(min=0)
        right_wins = level_val.gather(1, right) >= level_val.gather(1, start)
        answer = torch.where(right_wins, level_idx.gather(1, right), level_idx.gather(1, start))
        best = torch.where(at_level, answer, best)
    return best


def _swhs_rows(scores: torch.Tensor, labels: torch.Tensor, *, window: int | None, offset: int,
               label_gap: float, delta: float, surrogate: Surrogate, temperature: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """SW-HS per row: (Σ of pair costs [Q], number of candidates that found a pair [Q]).

    In ascending order (position r = N − 1 − k of the descending order), the window of r is
    positions r − offset − window + 1 … r − offset, and the candidates eligible with r are
    the prefix 0 … lower_count(r) − 1; the hard sample is the argmax of that range (on
    detached scores), the highest position on score ties (= the lowest descending
    position). Scores are padded in front with a −inf sentinel (candidate r at index r + 1):
    a candidate without a pair is matched to the sentinel, whose cost is exactly 0 with zero
    gradient for both surrogates, so no mask or clamp is needed.
    """
    n = scores.shape[1]
    sorted_labels, columns = _ascending_order(labels)
    position = torch.arange(n, device=scores.device)
    last = _lower_count(sorted_labels, label_gap)  # padded index of the last eligible (0: none)
    if offset > 1:  # with offset 1 the bound holds already: lower_count(r) ≤ r
        last = torch.minimum(last, (position - offset + 1).clamp(min=0))
    ranked = scores.gather(1, columns)
    padded = torch.nn.functional.pad(ranked, (1, 0), value=float("-inf"))
    if window is None:
        hard = torch.cummax(padded.detach(), dim=1).indices.gather(1, last)
    else:
        first = (position - offset - window + 2).clamp(min=1).expand_as(last)
        found = last >= first
        hard = _range_argmax(padded.detach(), first.where(found, 0), last.where(found, 0),
                             window)
    cost = pair_cost(ranked, padded.gather(1, hard), delta=delta, surrogate=surrogate,
                     temperature=temperature)
    return cost.sum(1), (hard > 0).sum(1)


def check_kendall_options(mode: str, window: int | None, offset: int, label_gap: float,
                          delta: float, surrogate: str, temperature: float,
                          where: str = "kendall_rank_loss") -> None:
    """Raise :class:`VsekitError` (one line) for an invalid Kendall option."""
    require(mode in ("swhs", "all"), f"{where}: mode must be 'swhs' or 'all', got {mode!r}")
    require(surrogate in ("hinge", "tanh"),
            f"{where}: surrogate must be 'hinge' or 'tanh', got {surrogate!r}")
    require(window is None or window >= 1,
            f"{where}: window must be at least 1 or null (to the end of the row), got {window}")
    require(offset >= 1, f"{where}: offset must be at least 1, got {offset}")
    require(label_gap >= 0, f"{where}: label_gap must be non-negative, got {label_gap}")
    require(delta >= 0, f"{where}: delta must be non-negative, got {delta}")
    require(temperature > 0, f"{where}: the surrogate temperature must be positive, "
                             f"got {temperature}")


def kendall_row_losses(scores: torch.Tensor, labels: torch.Tensor, *, mode: KendallMode = "swhs",
                       window: int | None = None, offset: int = 1, label_gap: float = 0.0,
                       delta: float = 0.0, surrogate: Surrogate = "hinge",
                       temperature: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row Kendall losses of :func:`kendall_rank_loss`: (sum over the rows that have at
    least one pair of their row loss (0-d, differentiable), number of such rows (0-d int64)).

    The batch loss is their ratio; under DDP each rank sums its own rows and the count is
    summed over ranks (:func:`vsekit.distributed.global_mean`). Arguments as there.
    """
    check_kendall_options(mode, window, offset, label_gap, delta, surrogate, temperature)
    require(scores.ndim == 2 and labels.shape == scores.shape,
            f"the label matrix has shape {tuple(labels.shape)} but the scores have shape "
            f"{tuple(scores.shape)}; pass one label per (query, candidate) score")
    options = {"label_gap": label_gap, "delta": delta, "surrogate": surrogate,
               "temperature": temperature}
    labels = labels.detach()
    if scores.numel() == 0:
        return scores.sum(), torch.zeros((), dtype=torch.int64, device=scores.device)
    if mode == "all":
        row_sum, row_count = _all_pair_rows(scores, labels, **options)
    else:
        row_sum, row_count = _swhs_rows(scores, labels, window=window, offset=offset, **options)
    has_pair = row_count > 0
    row_loss = row_sum / row_count.clamp(min=1)
    return row_loss.where(has_pair, 0).sum(), has_pair.sum()


def kendall_rank_loss(scores: torch.Tensor, labels: torch.Tensor, *, mode: KendallMode = "swhs",
                      window: int | None = None, offset: int = 1, label_gap: float = 0.0,
                      delta: float = 0.0, surrogate: Surrogate = "hinge",
                      temperature: float = 0.1) -> torch.Tensor:
    """Kendall rank loss between ``scores`` and continuous ``labels`` [unverified], scalar.

    Each row is one query; its candidates are ordered by label, descending, with a stable
    sort (ties keep column order). A pair (a, b) is eligible when y_b < y_a − label_gap
    (strict, computed in the labels' dtype: equal labels never pair) and costs
    :func:`pair_cost` (hinge: [s_b − s_a + delta]_+).

    - ``"all"``: every eligible pair; row loss = mean over its pairs. O(Q·N²) time, run in
      row blocks with recomputation in backward, so memory is bounded.
    - ``"swhs"``: for sorted position k, the window is positions k+offset … k+offset+window−1
      (``window=None``: to the end); of the window's candidates eligible with k, only the
      highest-scoring one l* (lowest position on score ties) pairs with k. Row loss = mean
      over the positions that found a pair. O(Q·N·log N) time, O(Q·N) memory.

    Batch loss = mean over the rows with at least one pair; 0, still differentiable, if none.

    Args:
        scores: float [Q, N] model similarities of query q to candidate n.
        labels: float [Q, N] relevance of candidate n to query q (higher = more relevant).
        surrogate: ``"hinge"`` or ``"tanh"`` (1 − tanh((s_a − s_b − delta) / temperature)).
    """
    total, rows = kendall_row_losses(scores, labels, mode=mode, window=window, offset=offset,
                                     label_gap=label_gap, delta=delta, surrogate=surrogate,
                                     temperature=temperature)
    return total / rows.clamp(min=1)


# --------------------------------------------------------------------------- loss modules


@dataclass
class TripletSNParams:
    """Parameters of ``triplet_sn`` (Triplet-SN, both directions averaged) [unverified].

    Attributes:
        margin: triplet margin m (similarity units).
        tau: softmax temperature of the soft negative weights; null → 0.1 for
            ``form: hinge`` (project choice) or 0.01 for ``form: lse`` (MV-VSE UnifiedLoss).
        form: ``"hinge"`` (:func:`triplet_sn_loss`, weights detached) or ``"lse"``
            (:func:`triplet_lse_loss`, fully differentiable).
        grad_through_weights: let gradient flow through the softmax weights (hinge form
            only; the lse form always does).
    """

    margin: float = 0.2
    tau: float | None = None
    form: Form = "hinge"
    grad_through_weights: bool = False

    @property
    def resolved_tau(self) -> float:
        return DEFAULT_TAU[self.form] if self.tau is None else self.tau

    def validate(self, where: str) -> None:
        require(self.margin >= 0, f"{where}.margin must be non-negative, got {self.margin}")
        require(self.tau is None or self.tau > 0,
                f"{where}.tau must be positive or null (form default), got {self.tau}")


@LOSSES.register("triplet_sn", TripletSNParams)
class TripletSNLoss(nn.Module):
    """Triplet-SN: soft-negative-weighted triplet hinge, mean of the i2t and t2i directions."""

    def __init__(self, params: TripletSNParams, **_context: Any) -> None:
        super().__init__()
        self.params = params

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                image_ids: torch.Tensor, *, pairs: PairSims | None = None,
                **_context: Any) -> LossOutput:
        """Loss of a batch: image_emb, text_emb [B, D] (normalised), image_ids int64 [B].

        Each direction is a mean over this process's B anchor rows; under DDP (equal local
        batches) that is the rank's share of the mean over the global batch.
        """
        p = self.params
        pairs = context_pairs(image_emb, text_emb, image_ids, pairs)
        mask = pairs.same_image()
        if p.form == "lse":
            one_way = functools.partial(triplet_lse_loss, margin=p.margin, tau=p.resolved_tau)
        else:
            one_way = functools.partial(triplet_sn_loss, margin=p.margin, tau=p.resolved_tau,
                                        grad_through_weights=p.grad_through_weights)
        loss = sum(one_way(sims, pairs.positive, m)
                   for sims, m in zip(pairs.directions(), pairs.masks(mask), strict=True)) / 2
        return LossOutput(loss, similarity_diagnostics(pairs, mask))


@dataclass
class BCLSParams:
    """Parameters of ``bcls``: base loss + lam · (Kendall i2t + Kendall t2i) / 2.

    Attributes:
        margin, tau, form, grad_through_weights: the Triplet-SN base (see
            :class:`TripletSNParams`); used only when ``base`` is ``triplet_sn``.
        lam: Kendall weight λ [related: the authors' code adds the two terms]; 0 turns the
            Kendall term off (and no labels are loaded).
        kendall_mode: ``"swhs"`` (default) or ``"all"`` (every eligible pair) [unverified].
        window: SW-HS window length w; null = to the end of the row [unverified].
        offset: SW-HS rank offset g ≥ 1 [unverified].
        label_gap: eligible pairs need y_a − y_b > label_gap [unverified; related code: 0.3
            in its all-pairs mode]. Labels are cosines in [-1, 1].
        delta: hinge margin of a Kendall pair [unverified].
        surrogate: ``"hinge"`` [related] or ``"tanh"`` [unverified].
        surrogate_temperature: T of the tanh surrogate [unverified].
        base: ``"triplet_sn"`` or any other registered loss (``vsepp``, ``infonce``, ``fne``…).
        base_params: that loss's parameters (must be empty for ``triplet_sn``).
        label_encoder: ``"minilm"`` (cached offline MiniLM embeddings of the train captions),
            ``"split_features"`` (the split's own caption features, e.g. Flickr8k's MiniLM), or
            ``"graded"``: the data's true graded relevance as the labels (built-in synthetic
            data only), an oracle that tests the Kendall loss apart from label quality.
        label_cache_dir: cache folder; null = ``~/.cache/vsekit/labels``.
        build_missing_labels: embed the captions when the cache is missing; false = error
            asking for ``vsekit labels build CONFIG``.
    """

    margin: float = 0.2
    tau: float | None = None
    form: Form = "hinge"
    grad_through_weights: bool = False
    lam: float = 1.0
    kendall_mode: KendallMode = "swhs"
    window: int | None = None
    offset: int = 1
    label_gap: float = 0.0
    delta: float = 0.0
    surrogate: Surrogate = "hinge"
    surrogate_temperature: float = 0.1
    base: str = "triplet_sn"
    base_params: dict = field(default_factory=dict)
    label_encoder: Literal["minilm", "split_features", "graded"] = "minilm"
    label_cache_dir: str | None = None
    build_missing_labels: bool = True

    def base_spec(self, where: str = "loss") -> tuple[str, Any]:
        """(registered name, validated params) of the base loss."""
        require(self.base != "bcls", f"{where}.base cannot be bcls itself; use triplet_sn, "
                                     f"vsepp, infonce or fne")
        if self.base == "triplet_sn":
            require(not self.base_params, f"{where}.base_params must be empty for base "
                                          "triplet_sn; set margin, tau and form directly")
            return "triplet_sn", parse_dataclass(
                TripletSNParams, {"margin": self.margin, "tau": self.tau, "form": self.form,
                                  "grad_through_weights": self.grad_through_weights}, where)
        return LOSSES.parse({"name": self.base, **self.base_params}, f"{where}.base_params")

    def kendall_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`kendall_rank_loss`."""
        return {"mode": self.kendall_mode, "window": self.window, "offset": self.offset,
                "label_gap": self.label_gap, "delta": self.delta, "surrogate": self.surrogate,
                "temperature": self.surrogate_temperature}

    def validate(self, where: str) -> None:
        require(self.lam >= 0 and math.isfinite(self.lam),
                f"{where}.lam must be a non-negative number, got {self.lam}")
        check_kendall_options(**self.kendall_options(), where=where)
        self.base_spec(where)


def graded_labels(graded: torch.Tensor, images: torch.Tensor, captions: torch.Tensor
                  ) -> torch.Tensor:
    """Rows ``images`` [A] and columns ``captions`` [C] of a graded relevance [N_img, N_cap]."""
    return graded[images[:, None], captions[None, :]].float()  # no [A, N_cap] intermediate


@LOSSES.register("bcls", BCLSParams)
class BCLSLoss(nn.Module):
    """BCLS: a base loss (Triplet-SN) plus λ × the Kendall rank loss on pseudo labels.

    Call :meth:`bind` once with the training split (the trainer does) to load the caption
    embeddings; they, and the padded [N_img, k_max] caption table, are non-persistent
    buffers (rebuilt from the cache, never checkpointed). Each step needs the ``batch``
    (its ``image_index`` and ``caption_index`` into the bound split) in the context.
    """

    def __init__(self, params: BCLSParams, **context: Any) -> None:
        super().__init__()
        self.params = params
        self.base = LOSSES.build(*params.base_spec(), **context)
        self.register_buffer("caption_emb", torch.empty(0, 0), persistent=False)
        self.register_buffer("table", torch.empty(0, 0, dtype=torch.long), persistent=False)
        self.register_buffer("table_valid", torch.empty(0, 0, dtype=torch.bool),
                             persistent=False)
        self.register_buffer("graded", torch.empty(0, 0), persistent=False)

    def bind(self, *, train_split: Any, model: Any = None, config: Any = None,
             **context: Any) -> None:
        """Load (or build) the train split's caption embeddings; forwards to the base."""
        if hasattr(self.base, "bind"):
            self.base.bind(train_split=train_split, model=model, config=config, **context)
        if self.params.lam == 0:
            return
        p = self.params
        if p.label_encoder == "graded":
            require(train_split.graded_relevance is not None,
                    "loss.label_encoder graded needs data with graded relevance (the built-in "
                    "synthetic scenes); use minilm or split_features")
            self.graded = torch.from_numpy(train_split.graded_relevance).to(self.graded.device)
            return
        if p.build_missing_labels:
            emb = load_or_build_cache(train_split, p.label_cache_dir, p.label_encoder)
        else:
            emb = load_cache(train_split, p.label_cache_dir, p.label_encoder)
        device = self.caption_emb.device
        table, valid = caption_table(torch.from_numpy(train_split.caption_to_image),
                                     train_split.n_images)
        self.caption_emb = torch.from_numpy(emb).to(device)
        self.table, self.table_valid = table.to(device), valid.to(device)

    def on_epoch_start(self, epoch: int) -> None:
        if hasattr(self.base, "on_epoch_start"):
            self.base.on_epoch_start(epoch)

    def commit_step(self) -> None:
        """Forward the trainer's commit of a kept step to a stateful base (e.g. ``fne``)."""
        if hasattr(self.base, "commit_step"):
            self.base.commit_step()

    def batch_labels(self, pairs: PairSims, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo labels of the anchors' rows: (i2t [B, N]: anchor image × every caption,
        t2i [B, N]: anchor caption × every image), 1 where the two share an image id.

        One process: one [B, B] label matrix (image of pair a × caption of pair b) and its
        transpose; under DDP the candidates' split rows are gathered from every rank.
        """
        if self.caption_emb.numel() == 0 and self.graded.numel() == 0:
            raise VsekitError("the bcls loss has no pseudo labels yet; call its bind(train_split"
                              "=...) before the first step (vsekit train does this)")
        same = pairs.same_image()
        image_index, caption_index = batch.image_index, batch.caption_index
        if self.graded.numel():
            labels = functools.partial(graded_labels, self.graded)
        else:
            labels = functools.partial(labels_from_table, self.caption_emb, self.table,
                                       self.table_valid)
        if pairs.shared:
            i2t = labels(image_index, caption_index).masked_fill(same, 1.0)
            return i2t, i2t.T
        all_images, all_captions = distributed.gather_many(image_index, caption_index)
        return (labels(image_index, all_captions).masked_fill(same, 1.0),
                labels(all_images, caption_index).T.masked_fill(same, 1.0))

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_ids: torch.Tensor,
                *, batch: Any = None, **context: Any) -> LossOutput:
        """Loss of a batch: image_emb, text_emb [B, D] (normalised), image_ids int64 [B];
        ``batch`` (a :class:`vsekit.data.Batch`) supplies the label indices.

        The base loss and the Kendall term share one :class:`PairSims` (one gather per step
        under DDP). Each Kendall direction is a mean over the rows that have a pair; under
        DDP their number is summed over ranks, so the result equals one process's.
        """
        pairs = pair_similarities(image_emb, text_emb, image_ids)
        base = self.base(image_emb, text_emb, image_ids, batch=batch, pairs=pairs, **context)
        if self.params.lam == 0:
            return base
        if batch is None:
            raise VsekitError("the bcls loss needs the batch (image_index, caption_index) in its "
                              "context; call it as loss(image_emb, text_emb, ids, batch=batch)")
        options = self.params.kendall_options()
        parts = [kendall_row_losses(sims, labels, **options) for sims, labels in
                 zip(pairs.directions(), self.batch_labels(pairs, batch), strict=True)]
        i2t, t2i = distributed.global_mean(torch.stack([total for total, _ in parts]),
                                           torch.stack([rows for _, rows in parts]))
        loss = base.loss + self.params.lam * (i2t + t2i) / 2
        diagnostics = {**base.diagnostics, "base_loss": base.loss.detach(),
                       "kendall_i2t": i2t.detach(), "kendall_t2i": t2i.detach()}
        return LossOutput(loss, diagnostics)
