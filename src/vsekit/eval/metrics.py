"""Retrieval ranks and recall metrics from a given similarity matrix, chunked and vectorised.

Conventions (docs/methods.md §3.2): ``sims`` is [n_images, n_captions]; a query's 0-based
rank is the number of candidates scoring STRICTLY higher than its ground truth (GT).

- i2t rank of image i = min over its GT captions c of #{captions scoring > s[i, c]}, which is
  #{captions scoring > max over GT c of s[i, c]} (the min is attained at the best GT).
- t2i rank of caption j = #{images scoring > s[g(j), j]}, with g = ``caption_to_image``.

Without ties this equals the classic per-query argsort loop exactly; with ties it equals that
loop with every tie broken in favour of the GT (a tied candidate never counts as ahead).

Counting is one pass over row blocks of ``sims``: per block, one comparison against the
per-column thresholds (t2i) and one against the per-row thresholds (i2t). Each worker holds
one block of derived matrices (a bool mask, plus a float32 copy for float16/bfloat16 input)
at a time; ``sims`` itself is never copied whole. On CPU the blocks are counted with numpy in
``torch.get_num_threads()`` Python threads (numpy releases the GIL): unlike torch's intra-op
threads, which meet at a barrier after every op, they keep their speed when other processes
compete for the cores (docs/benchmarks.md). On an accelerator the blocks are counted with
torch ops in sequence, with one host sync at the end.
"""

from __future__ import annotations

import math
import queue
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from vsekit.errors import VsekitError, require

Matrix = np.ndarray | torch.Tensor

_CHUNK_ELEMENTS = 1 << 20  # ~1M scores per block: its bool mask (1 MiB) stays in L2 cache
_TORCH_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NUMPY_FLOATS = (np.float16, np.float32, np.float64)
DEFAULT_KS = (1, 5, 10)


def _to_torch(block: Matrix) -> torch.Tensor:
    """A torch view of a numpy block (copied only if not contiguous); tensors pass through."""
    if isinstance(block, torch.Tensor):
        return block
    with warnings.catch_warnings():  # read-only arrays (memmaps) warn; nothing writes to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(block))


class _Scores:
    """A validated [n_images, n_captions] score matrix, read in row blocks.

    Blocks come in the comparison dtype (float64 stays float64, everything else is float32,
    which is exact): numpy arrays on CPU (a CPU tensor is viewed, not copied), torch tensors on
    an accelerator.
    """

    def __init__(self, sims: Matrix) -> None:
        if isinstance(sims, torch.Tensor):
            require(sims.dtype in _TORCH_FLOATS,
                    f"the similarity matrix has dtype {sims.dtype}; pass float16, bfloat16, "
                    f"float32 or float64 scores")
        else:
            sims = np.asarray(sims)
            require(sims.dtype.type in _NUMPY_FLOATS,
                    f"the similarity matrix has dtype {sims.dtype}; pass float16, float32 or "
                    f"float64 scores")
        require(sims.ndim == 2 and sims.shape[0] > 0 and sims.shape[1] > 0,
                f"the similarity matrix must be 2-D [n_images, n_captions] with at least one "
                f"row and column, got shape {tuple(sims.shape)}")
        self.n_rows, self.n_cols = (int(n) for n in sims.shape)
        self.device = sims.device if isinstance(sims, torch.Tensor) else torch.device("cpu")
        float64 = sims.dtype in (torch.float64, np.float64)
        self.dtype = torch.float64 if float64 else torch.float32
        if isinstance(sims, torch.Tensor):
            sims = sims.detach()
            if self.device.type == "cpu" and sims.dtype != torch.bfloat16:
                sims = sims.numpy()
        self.data = sims

    def block(self, start: int, stop: int) -> Matrix:
        """Rows start..stop-1 in the comparison dtype (contiguous numpy on CPU)."""
        part = self.data[start:stop]
        if isinstance(part, torch.Tensor):
            part = part.to(self.dtype)
            return part.numpy() if self.device.type == "cpu" else part
        return np.ascontiguousarray(part, dtype=np.float64 if self.dtype == torch.float64
                                    else np.float32)

    def blocks(self, step: int) -> Iterator[tuple[int, int, Matrix]]:
        """Yield (start, stop, block) over all rows, ``step`` rows at a time."""
        for start in range(0, self.n_rows, step):
            stop = min(start + step, self.n_rows)
            yield start, stop, self.block(start, stop)

    def entries(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Scores s[row[k], col[k]] (int64 index tensors on ``self.device``), comparison dtype."""
        if isinstance(self.data, np.ndarray):
            return torch.from_numpy(self.data[row.numpy(), col.numpy()]).to(self.dtype)
        return self.data[row, col].to(self.dtype)

    def raise_nan(self, step: int) -> None:
        """Raise :class:`VsekitError` naming the first NaN score (error path only)."""
        for start, _, block in self.blocks(step):
            where = torch.isnan(_to_torch(block)).nonzero()
            if len(where):
                i, j = (int(v) for v in where[0])
                raise VsekitError(
                    f"the similarity matrix has NaN at [{start + i}, {j}]; check the embeddings "
                    f"for NaN (e.g. a diverged model or a normalised zero vector) before "
                    f"evaluating")


def _chunk_rows(chunk_size: int | None, n_cols: int) -> int:
    """Rows per block: ``chunk_size`` if given (validated), else ~_CHUNK_ELEMENTS scores."""
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // n_cols)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) \
            or chunk_size < 1:
        raise VsekitError(f"chunk_size must be a positive integer (rows of the similarity "
                          f"matrix per block), got {chunk_size!r}")
    return int(chunk_size)


def count_block(block: np.ndarray, row_thresholds: np.ndarray, col_thresholds: np.ndarray,
                mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: #{entries > its row threshold}; per column: #{entries > its column threshold}.

    ``block`` float [R, C]; thresholds [R] and [C] in its dtype; ``mask`` a bool [R, C] work
    buffer. Returns int32 counts ([R], [C]).
    """
    np.greater(block, col_thresholds, out=mask)
    col_counts = mask.view(np.uint8).sum(0, dtype=np.int32)
    np.greater(block, row_thresholds[:, None], out=mask)
    return mask.view(np.uint8).sum(1, dtype=np.int32), col_counts


def _count_greater_numpy(scores: _Scores, row_thresholds: np.ndarray, col_thresholds: np.ndarray,
                         step: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """CPU counting: worker threads pull row blocks from a queue, each with its own mask."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for start in range(0, scores.n_rows, step):
        todo.put(start)
    row_counts = np.empty(scores.n_rows, dtype=np.int64)

    def work() -> tuple[np.ndarray, bool]:
        mask = np.empty((min(step, scores.n_rows), scores.n_cols), dtype=bool)
        col_counts = np.zeros(scores.n_cols, dtype=np.int64)
        has_nan = False
        while True:
            try:
                start = todo.get_nowait()
            except queue.Empty:
                return col_counts, has_nan
            stop = min(start + step, scores.n_rows)
            block = scores.block(start, stop)
            has_nan |= bool(np.isnan(block.max()))  # max propagates NaN
            rows, cols = count_block(block, row_thresholds[start:stop], col_thresholds,
                                     mask[: stop - start])
            row_counts[start:stop] = rows
            col_counts += cols

    workers = min(torch.get_num_threads(), -(-scores.n_rows // step))
    with ThreadPoolExecutor(workers) as pool:
        parts = [job.result() for job in [pool.submit(work) for _ in range(workers)]]
    return row_counts, sum(p[0] for p in parts), any(p[1] for p in parts)


def _count_greater_torch(scores: _Scores, row_thresholds: torch.Tensor,
                         col_thresholds: torch.Tensor, step: int
                         ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Accelerator counting: torch ops block after block, one host sync at the end."""
    device = row_thresholds.device
    row_counts = torch.empty(scores.n_rows, dtype=torch.int32, device=device)
    col_counts = torch.zeros(scores.n_cols, dtype=torch.int32, device=device)
    mask = torch.empty(min(step, scores.n_rows), scores.n_cols, dtype=torch.bool, device=device)
    has_nan = torch.zeros((), dtype=torch.bool, device=device)
    for start, stop, block in scores.blocks(step):
        block, ahead = _to_torch(block), mask[: stop - start]
        has_nan |= torch.isnan(block.amax())  # amax propagates NaN
        torch.gt(block, col_thresholds, out=ahead)
        col_counts += ahead.view(torch.uint8).sum(0, dtype=torch.int32)
        torch.gt(block, row_thresholds[start:stop, None], out=ahead)
        row_counts[start:stop] = ahead.view(torch.uint8).sum(1, dtype=torch.int32)
    return row_counts.long().cpu().numpy(), col_counts.long().cpu().numpy(), bool(has_nan)


def _count_greater(scores: _Scores, row_thresholds: torch.Tensor, col_thresholds: torch.Tensor,
                   chunk_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row i: #{j : s[i, j] > row_thresholds[i]}; per column j: #{i : s[i, j] > col_thr[j]}.

    Thresholds are torch tensors in the comparison dtype on the scores' device ([n_rows],
    [n_cols]). Returns int64 numpy counts ([n_rows], [n_cols]); raises :class:`VsekitError`
    if any score is NaN.
    """
    step = _chunk_rows(chunk_size, scores.n_cols)
    if scores.device.type == "cpu":
        counts = _count_greater_numpy(scores, row_thresholds.numpy(), col_thresholds.numpy(),
                                      step)
    else:
        counts = _count_greater_torch(scores, row_thresholds, col_thresholds, step)
    row_counts, col_counts, has_nan = counts
    if has_nan:
        scores.raise_nan(step)
    return row_counts, col_counts


def caption_map(caption_to_image: Sequence[int] | Matrix, n_images: int, n_captions: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Validated caption→image map as int64 [n_captions] on ``device`` (one image index in
    0..n_images-1 per caption; :class:`VsekitError` otherwise)."""
    if not isinstance(caption_to_image, torch.Tensor):
        caption_to_image = np.asarray(caption_to_image)
    shape, dtype = tuple(caption_to_image.shape), caption_to_image.dtype
    require(shape == (n_captions,),
            f"caption_to_image has shape {shape} but the similarity matrix has {n_captions} "
            f"captions (columns); pass one image index per caption")
    integer = (np.issubdtype(dtype, np.integer) if isinstance(dtype, np.dtype)
               else not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool))
    require(integer, f"caption_to_image has dtype {dtype}; pass integer image indices")
    if isinstance(caption_to_image, np.ndarray):
        caption_to_image = torch.from_numpy(caption_to_image.astype(np.int64))
    mapping = caption_to_image.to(device=device, dtype=torch.int64)
    bad = torch.nonzero((mapping < 0) | (mapping >= n_images))
    if len(bad):
        j = int(bad[0])
        raise VsekitError(f"caption_to_image[{j}] = {int(mapping[j])} is outside the image range "
                          f"0..{n_images - 1} of the similarity matrix; check that "
                          f"captions and images come from the same split")
    return mapping


def retrieval_ranks(sims: Matrix, caption_to_image: Sequence[int] | Matrix,
                    chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """0-based i2t and t2i ranks (strict-greater counts; see the module docstring).

    Args:
        sims: [n_images, n_captions] float16/32/64 scores (numpy, or torch on any device;
            torch may also be bfloat16).
        caption_to_image: int [n_captions], the image index of each caption. An image may have
            any number of captions, including none.
        chunk_size: rows of ``sims`` per block (None: about 1M scores per block).

    Returns:
        (i2t_ranks int64 [n_images], t2i_ranks int64 [n_captions]) as numpy arrays. Images
        without a caption have no ground truth: their i2t rank is -1 (excluded by
        :func:`metrics_from_ranks`).
    """
    scores = _Scores(sims)
    mapping = caption_map(caption_to_image, scores.n_rows, scores.n_cols, scores.device)
    with torch.no_grad():
        gt = scores.entries(mapping, torch.arange(scores.n_cols, device=scores.device))
        best = torch.full((scores.n_rows,), -math.inf, dtype=gt.dtype, device=scores.device)
        best.scatter_reduce_(0, mapping, gt, reduce="amax")
        i2t, t2i = _count_greater(scores, best, gt, chunk_size)
        has_caption = torch.bincount(mapping, minlength=scores.n_rows).cpu().numpy() > 0
    return np.where(has_caption, i2t, -1), t2i


def _valid_ranks(ranks: Matrix, name: str) -> np.ndarray:
    ranks = ranks.cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    require(ranks.ndim == 1, f"{name} must be 1-D, got shape {ranks.shape}")
    kept = ranks[ranks >= 0]
    require(kept.size > 0, f"{name} has no query with a ground truth (all ranks are -1); "
                           f"evaluate on a split where queries have matches")
    return kept


def recall_at_k(ranks: Matrix, ks: Sequence[int] = DEFAULT_KS) -> list[float]:
    """R@K in percent for each K: 100 × fraction of queries with 0-based rank < K.

    Negative ranks (queries without ground truth) are excluded.
    """
    for k in ks:
        require(isinstance(k, int | np.integer) and not isinstance(k, bool) and k >= 1,
                f"recall cut-offs must be positive integers, got {k!r}")
    kept = _valid_ranks(ranks, "ranks")
    return [100.0 * float(np.count_nonzero(kept < k)) / kept.size for k in ks]


def metrics_from_ranks(i2t_ranks: Matrix, t2i_ranks: Matrix) -> dict[str, float]:
    """Standard metrics from 0-based ranks (negative ranks = no ground truth, excluded).

    Returns ``{d}_r1, {d}_r5, {d}_r10`` (percent), ``{d}_medr`` (floor(median rank) + 1),
    ``{d}_meanr`` (mean rank + 1) for d in (i2t, t2i), and ``rsum`` (sum of the six recalls).
    """
    out: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        kept = _valid_ranks(ranks, f"{direction}_ranks")
        for k, recall in zip(DEFAULT_KS, recall_at_k(kept), strict=True):
            out[f"{direction}_r{k}"] = recall
        out[f"{direction}_medr"] = float(math.floor(np.median(kept))) + 1.0
        out[f"{direction}_meanr"] = float(kept.mean()) + 1.0
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in DEFAULT_KS)
    return out


def retrieval_metrics(sims: Matrix, caption_to_image: Sequence[int] | Matrix, *,
                      chunk_size: int | None = None) -> dict[str, float]:
    """R@1/5/10, medr, meanr per direction and rsum for a [n_images, n_captions] score matrix.

    See :func:`retrieval_ranks` for the inputs (images without captions are left out of
    i2t) and :func:`metrics_from_ranks` for the keys. Raises :class:`VsekitError` on a bad
    shape, dtype, out-of-range caption index or a NaN score.
    """
    return metrics_from_ranks(*retrieval_ranks(sims, caption_to_image, chunk_size))


def relevance_ranks(sims: Matrix, relevance: Matrix,
                    chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks against complete relevance: the strict-greater count of the best-scoring
    truly relevant item (a query is a hit at K if ANY relevant item is in its top K).

    Args:
        sims: [n_images, n_captions] float scores (as in :func:`retrieval_ranks`).
        relevance: bool [n_images, n_captions], True where caption j truly describes image i.
        chunk_size: rows per block (None: automatic).

    Returns:
        (i2t int64 [n_images], t2i int64 [n_captions]) numpy arrays; -1 for a query with no
        relevant item (excluded by :func:`recall_at_k`).
    """
    scores = _Scores(sims)
    if not isinstance(relevance, torch.Tensor):
        relevance = np.asarray(relevance)
    require(tuple(relevance.shape) == (scores.n_rows, scores.n_cols),
            f"relevance has shape {tuple(relevance.shape)} but the similarity matrix is "
            f"{(scores.n_rows, scores.n_cols)}; pass one flag per image-caption pair")
    require(relevance.dtype in (torch.bool, np.bool_),
            f"relevance has dtype {relevance.dtype}; pass a boolean matrix (e.g. graded > 0)")
    device, step = scores.device, _chunk_rows(chunk_size, scores.n_cols)
    with torch.no_grad():
        row_best = torch.empty(scores.n_rows, dtype=scores.dtype, device=device)
        row_any = torch.empty(scores.n_rows, dtype=torch.bool, device=device)
        col_best = torch.full((scores.n_cols,), -math.inf, dtype=scores.dtype, device=device)
        col_any = torch.zeros(scores.n_cols, dtype=torch.bool, device=device)
        for start, stop, block in scores.blocks(step):
            flags = _to_torch(relevance[start:stop]).to(device)
            relevant = _to_torch(block).masked_fill(~flags, -math.inf)
            row_best[start:stop] = relevant.amax(1)
            row_any[start:stop] = flags.any(1)
            torch.maximum(col_best, relevant.amax(0), out=col_best)
            col_any |= flags.any(0)
        i2t, t2i = _count_greater(scores, row_best, col_best, chunk_size)
    return np.where(row_any.cpu().numpy(), i2t, -1), np.where(col_any.cpu().numpy(), t2i, -1)


def relevance_recall(sims: Matrix, relevance: Matrix, ks: Sequence[int] = DEFAULT_KS, *,
                     chunk_size: int | None = None) -> dict[str, float]:
    """Recall@K (percent) against complete relevance, queries without a relevant item excluded.

    Returns ``i2t_rel_r{k}`` and ``t2i_rel_r{k}`` for each K in ``ks``, and ``rel_rsum`` (their
    sum). Inputs as in :func:`relevance_ranks`.
    """
    i2t, t2i = relevance_ranks(sims, relevance, chunk_size)
    out: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k, recall in zip(ks, recall_at_k(ranks, ks), strict=True):
            out[f"{direction}_rel_r{k}"] = recall
    out["rel_rsum"] = sum(out.values())
    return out
