"""Graded-relevance metrics: Kendall τ-b and nDCG@K between model scores and graded relevance.

Binary R@K only asks whether a ground-truth item is near the top; these metrics ask whether
the whole ranking follows a graded relevance (the built-in dataset's true fraction of
satisfied facts, or sentence-encoder pseudo labels as a proxy on any dataset).

Conventions (rows are queries, columns are candidates):

- Kendall τ-b per row, ties in either variable handled by the τ-b denominator; a row where
  either side is constant (or has fewer than 2 candidates) is NaN and left out of means.
  Cost O(N log N) per row: sort by (relevance, score), then count discordant pairs as the
  inversions of the score sequence with a bottom-up merge sort, vectorised over rows.
- nDCG@K per row with linear gains max(relevance, 0) (a negative pseudo-label cosine counts as
  irrelevant) and discount 1 / log2(rank + 2), 0-based rank; the ideal DCG sorts the gains
  descending. Tied scores are ranked by column index (stable sort on -score), so a tie is
  broken in favour of the earlier candidate. A row whose ideal DCG is 0 is NaN.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from vsekit.errors import require
from vsekit.labels import continuous_labels

Matrix = np.ndarray | torch.Tensor

CHUNK_ELEMENTS = 1 << 20  # scores per block: bounds the float64/int64 work arrays (~8 MiB each)
DEFAULT_KS = (10, 50)


# --------------------------------------------------------------------------- input handling


def _check_shapes(scores: Matrix, relevance: Matrix, names: tuple[str, str]) -> None:
    require(len(scores.shape) == 2 and scores.shape[0] > 0 and scores.shape[1] > 0,
            f"{names[0]} must be a non-empty 2-D matrix, got shape {tuple(scores.shape)}; pass "
            f"one row per query and one column per candidate")
    require(tuple(relevance.shape) == tuple(scores.shape),
            f"{names[1]} has shape {tuple(relevance.shape)} but {names[0]} is "
            f"{tuple(scores.shape)}; pass one relevance value per score")


def _block(matrix: Matrix, start: int, stop: int, transpose: bool, name: str) -> np.ndarray:
    """Rows ``start:stop`` (columns if ``transpose``, as rows) as finite float64 numpy."""
    part = matrix[:, start:stop].T if transpose else matrix[start:stop]
    if isinstance(part, torch.Tensor):
        part = part.detach().to("cpu", torch.float64).numpy()
    part = np.ascontiguousarray(part, dtype=np.float64)
    require(bool(np.isfinite(part).all()),
            f"{name} contains NaN or infinite values; check the embeddings or labels that "
            f"produced it")
    return part


def _blocks(scores: Matrix, relevance: Matrix, transpose: bool, names: tuple[str, str]
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(scores, relevance) float64 blocks [rows, N] over every query (columns if transpose)."""
    n_queries, n_candidates = scores.shape[::-1] if transpose else scores.shape
    step = max(1, CHUNK_ELEMENTS // n_candidates)
    for start in range(0, n_queries, step):
        stop = min(start + step, n_queries)
        yield (_block(scores, start, stop, transpose, names[0]),
               _block(relevance, start, stop, transpose, names[1]))


def _as_matrix(matrix: Matrix) -> Matrix:
    return matrix if isinstance(matrix, torch.Tensor) else np.asarray(matrix)


# --------------------------------------------------------------------------- Kendall τ-b


def _tied_pairs(sorted_values: np.ndarray) -> np.ndarray:
    """Pairs of equal entries per row of a row-sorted [R, N] array, int64 [R].

    Each entry is paired with the earlier members of its run: sum over i of (i − run start).
    """
    return _run_pairs(sorted_values[:, 1:] != sorted_values[:, :-1])


def _run_pairs(breaks: np.ndarray) -> np.ndarray:
    """Pairs inside runs, int64 [R], from ``breaks`` [R, N−1]: True where a new run starts."""
    n = breaks.shape[1] + 1
    index = np.arange(n)
    starts = np.where(np.pad(breaks, ((0, 0), (1, 0)), constant_values=True), index, 0)
    return (index - np.maximum.accumulate(starts, axis=1)).sum(axis=1)


def _inversions(ranks: np.ndarray) -> np.ndarray:
    """Pairs i < j with ranks[i] > ranks[j] per row of int [R, N] in 0..N−1, int64 [R].

    Bottom-up merge sort on keys rank · P + position (P = N rounded up to a power of 2, so
    keys are distinct and a tie keeps the earlier element first): at width w each row is a
    sequence of sorted blocks of w, and sorting neighbouring pairs (L, R) moves every L element
    right by the number of smaller R elements and every R element left by the number of larger
    L elements, so the total |displacement| is twice the inversions between L and R. Padding
    with rank P − 1 at the end adds none. A stable sort of two sorted runs is one linear merge,
    so the log2(P) passes cost O(N log N) per row.
    """
    rows, n = ranks.shape
    padded = 1 << max(0, (n - 1).bit_length())
    dtype = np.int32 if padded * padded <= np.iinfo(np.int32).max else np.int64
    position = np.arange(padded, dtype=dtype)
    key = np.full((rows, padded), padded - 1, dtype=dtype)
    key[:, :n] = ranks
    key = key * padded + position
    total = np.zeros(rows, dtype=np.int64)
    width = 1
    while width < padded:
        blocks = key.reshape(rows, -1, 2 * width)
        key = np.sort(blocks, axis=-1, kind="stable").reshape(rows, padded)  # timsort: 1 merge
        shift = (key & (padded - 1)) - position  # old position − new position
        total += np.abs(shift).sum(axis=1, dtype=np.int64)
        key -= shift
        width *= 2
    return total // 2


def _dense_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dense ranks int64 [R, N] (0 = smallest, equal values share a rank), tied pairs [R])."""
    order = np.argsort(values, axis=1)
    ordered = np.take_along_axis(values, order, axis=1)
    breaks = ordered[:, 1:] != ordered[:, :-1]
    dense = np.zeros(values.shape, dtype=np.int64)
    np.cumsum(breaks, axis=1, out=dense[:, 1:])
    ranks = np.empty_like(dense)
    np.put_along_axis(ranks, order, dense, axis=1)
    return ranks, _run_pairs(breaks)


def _tau_block(scores: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Kendall τ-b per row of float64 [R, N] blocks, float64 [R] (NaN where undefined).

    C − D = P − T_rel − T_score + T_both − 2D: the pairs tied in neither variable are C + D.
    Sorted by (relevance, score), D is the number of inversions of the score ranks.
    """
    n = scores.shape[1]
    rel_rank, rel_ties = _dense_ranks(relevance)
    score_rank, score_ties = _dense_ranks(scores)
    joint = np.sort(rel_rank * n + score_rank, axis=1)  # by relevance, then by score
    joint_ties = _tied_pairs(joint)
    discordant = _inversions(joint % n)
    all_pairs = n * (n - 1) // 2
    numerator = all_pairs - rel_ties - score_ties + joint_ties - 2 * discordant
    denominator = np.sqrt((all_pairs - rel_ties).astype(np.float64)
                          * (all_pairs - score_ties).astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(denominator > 0, numerator / denominator, np.nan)
    return np.clip(tau, -1.0, 1.0)


def kendall_tau_b(scores: Matrix, relevance: Matrix) -> np.ndarray:
    """Kendall τ-b between each row of ``scores`` and of ``relevance``, float64 [Q].

    τ-b = (C − D) / sqrt((P − T_rel)(P − T_score)), with C/D the concordant/discordant pairs,
    P = N(N−1)/2 and T_x the pairs tied in x. NaN where a row of either is constant.

    Args:
        scores: float [Q, N] model similarities (numpy or torch), rows are queries.
        relevance: float [Q, N] graded relevance of each candidate to its query.

    Raises:
        VsekitError: shapes differ or are not 2-D, or a value is NaN or infinite.
    """
    scores, relevance = _as_matrix(scores), _as_matrix(relevance)
    names = ("scores", "relevance")
    _check_shapes(scores, relevance, names)
    parts = [_tau_block(s, r) for s, r in _blocks(scores, relevance, False, names)]
    return np.concatenate(parts)


# --------------------------------------------------------------------------- nDCG@K


def _ndcg_block(scores: np.ndarray, relevance: np.ndarray, ks: Sequence[int]
                ) -> dict[int, np.ndarray]:
    """nDCG@k per row of float64 [R, N] blocks for every k in ``ks`` → {k: float64 [R]}."""
    top = min(max(ks), scores.shape[1])
    gains = np.maximum(relevance, 0.0)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    ranked = np.take_along_axis(gains, order, axis=1)
    ideal = -np.sort(-gains, axis=1)[:, :top]
    discount = 1.0 / np.log2(np.arange(top) + 2.0)
    dcg = np.cumsum(ranked * discount, axis=1)
    idcg = np.cumsum(ideal * discount, axis=1)
    out = {}
    for k in ks:
        at = min(k, top) - 1
        with np.errstate(divide="ignore", invalid="ignore"):
            out[k] = np.where(idcg[:, at] > 0, dcg[:, at] / idcg[:, at], np.nan)
    return out


def _check_ks(ks: Sequence[int]) -> None:
    require(len(ks) > 0 and all(isinstance(k, int | np.integer) and k >= 1 for k in ks),
            f"ks must be positive integers, got {list(ks)}")


def ndcg_at_k(scores: Matrix, relevance: Matrix, k: int) -> np.ndarray:
    """nDCG@k per row, float64 [Q] in [0, 1] (NaN where the row has no positive relevance).

    Gains are max(relevance, 0) (linear), discount 1 / log2(rank + 2); candidates are ranked
    by score descending, ties by column index. k above N is N.

    Args:
        scores: float [Q, N] model similarities (numpy or torch), rows are queries.
        relevance: float [Q, N] graded relevance (e.g. in [0, 1]).
        k: cut-off, a positive integer.

    Raises:
        VsekitError: shapes differ or are not 2-D, a value is not finite, or k < 1.
    """
    scores, relevance = _as_matrix(scores), _as_matrix(relevance)
    names = ("scores", "relevance")
    _check_shapes(scores, relevance, names)
    _check_ks([k])
    parts = [_ndcg_block(s, r, [k])[k] for s, r in _blocks(scores, relevance, False, names)]
    return np.concatenate(parts)


# --------------------------------------------------------------------------- both directions


def _nanmean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def graded_metrics(sims: Matrix, graded: Matrix, ks: Sequence[int] = DEFAULT_KS,
                   prefix: str = "") -> dict[str, float]:
    """Mean Kendall τ-b and nDCG@K of a similarity matrix against graded relevance, both ways.

    i2t ranks captions for each image (rows of ``sims`` against rows of ``graded``); t2i ranks
    images for each caption (columns against columns). Means skip undefined (NaN) queries; a
    direction with none is NaN. Blocks of about 1M scores are processed at a time.

    Args:
        sims: float [n_images, n_captions] model similarities (numpy or torch).
        graded: float [n_images, n_captions] relevance of caption j to image i.
        ks: nDCG cut-offs.
        prefix: prepended to every key (e.g. ``"graded_"``, ``"pseudo_"``).

    Returns:
        ``{prefix}{d}_kendall_tau`` (raw τ-b in [-1, 1]) and ``{prefix}{d}_ndcg{k}`` (percent)
        for d in i2t, t2i and each k in ``ks``.

    Raises:
        VsekitError: shapes differ or are not 2-D, a value is not finite, or a bad k.
    """
    sims, graded = _as_matrix(sims), _as_matrix(graded)
    names = ("the similarity matrix", "the graded relevance matrix")
    _check_shapes(sims, graded, names)
    _check_ks(ks)
    out: dict[str, float] = {}
    for direction, transpose in (("i2t", False), ("t2i", True)):
        taus, ndcgs = [], []
        for scores, relevance in _blocks(sims, graded, transpose, names):
            taus.append(_tau_block(scores, relevance))
            ndcgs.append(_ndcg_block(scores, relevance, ks))
        out[f"{prefix}{direction}_kendall_tau"] = _nanmean(np.concatenate(taus))
        for k in ks:
            values = np.concatenate([part[k] for part in ndcgs])
            out[f"{prefix}{direction}_ndcg{k}"] = 100.0 * _nanmean(values)
    return out


def pseudo_relevance(caption_emb: Matrix, caption_to_image: Sequence[int] | Matrix
                     ) -> np.ndarray:
    """Pseudo-label relevance of every (image, caption), float32 [n_images, N_cap].

    Entry (i, j) = max over the captions c of image i of e_c · e_j (cosine of L2-normalised
    sentence embeddings), and 1.0 where caption j belongs to image i; n_images =
    max(caption_to_image) + 1. See :func:`vsekit.labels.continuous_labels` (which raises
    :class:`VsekitError` on bad embeddings, bad indices or an image without captions).

    Args:
        caption_emb: float [N_cap, D], L2-normalised caption embeddings.
        caption_to_image: int [N_cap], image index of each caption.
    """
    caption_emb = torch.as_tensor(caption_emb)
    caption_to_image = torch.as_tensor(caption_to_image).long()
    require(caption_to_image.ndim == 1 and caption_to_image.numel() > 0,
            f"caption_to_image must be a non-empty 1-D index array, got shape "
            f"{tuple(caption_to_image.shape)}")
    n_images = int(caption_to_image.max()) + 1
    labels = continuous_labels(caption_emb, caption_to_image, torch.arange(n_images),
                               torch.arange(caption_to_image.numel()))
    return labels.float().cpu().numpy()
