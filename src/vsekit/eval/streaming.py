"""Streaming evaluation: ranks (and top-k lists) from embeddings, tile by tile.

The [n_images, n_captions] similarity matrix is never held: worker threads each take a block
of ``tile_rows`` images, compute its similarities to ``tile_cols`` captions at a time (one
matmul per tile, ~1M scores, cache-resident), count per tile the captions scoring above each
image's best ground-truth (GT) score and the images scoring above each caption's GT score,
and, where asked, merge the tile's best candidates into running top-k lists. Memory is the
embeddings plus a few tiles and count arrays per worker.

Ranks follow :mod:`vsekit.eval.metrics` exactly (strict-greater counts, ties in favour of the
GT), on the matrix the tiles compute. The GT scores (thresholds) are read from those same
tiles in a first, short pass: captions are visited sorted by image, so the GT captions of a
block of images are one column range, tiled identically in both passes (the first pass
computes only those tiles: about ``tile_rows`` × n_captions scores in all). Each GT score is
therefore bit-identical to the score it is compared with. With float32 the tiles equal
``image_emb @ text_emb.T`` computed whole wherever the BLAS rounds tiles like the whole
matmul (MKL does for tiles of at least ~16 × 16; always when the dot products are exact), so
the ranks equal those of :func:`~vsekit.eval.metrics.retrieval_ranks` on that matrix.

Top-k lists order candidates by score, ties by index (lower first), so they are
deterministic and equal a stable argsort of the negated scores.

On CPU the tiles run in ``torch.get_num_threads()`` Python threads, each with a single-threaded
matmul (torch's intra-op threads are set to 1 for the duration and restored): threads that
pull tiles from a queue keep their speed when other processes share the cores
(docs/benchmarks.md). ``half=True`` computes the similarities in bfloat16 (2–3× faster
matmuls on CPUs with AVX512-BF16); bfloat16 keeps 8 significant bits, so rounding creates
ties that favour the GT: :func:`half_agreement` measures how far that moves ranks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

from vsekit.errors import VsekitError, require
from vsekit.eval.metrics import (
    DEFAULT_KS,
    _to_torch,
    caption_map,
    count_block,
    metrics_from_ranks,
)

Embeddings = np.ndarray | torch.Tensor
T = TypeVar("T")

TILE_ROWS = 256
TILE_COLS = 4096  # 1M scores per tile: float32 4 MiB + bool mask 1 MiB per worker
HALF_DTYPE = torch.bfloat16
HALF_SAMPLE = 1000  # sampled queries per direction for the half-precision check
HALF_MIN_AGREEMENT = 99.0  # percent of sampled queries whose R@1/5/10 outcome must not change
_LOW = (1 << 32) - 1  # low 32 bits of a top-k key: the candidate index, inverted
_EMPTY_KEY = torch.iinfo(torch.int64).min


@dataclass
class StreamResult:
    """What one streaming pass found.

    Attributes:
        i2t_ranks: int64 [n_images] 0-based ranks, -1 for images without a caption
            (None unless ranks were asked for).
        t2i_ranks: int64 [n_captions] 0-based ranks (None unless ranks were asked for).
        i2t_top: int64 [n_images, k] caption indices per image, best first (None if k = 0).
        t2i_top: int64 [n_captions, k] image indices per caption, best first (None if k = 0).
    """

    i2t_ranks: np.ndarray | None = None
    t2i_ranks: np.ndarray | None = None
    i2t_top: np.ndarray | None = None
    t2i_top: np.ndarray | None = None


# --------------------------------------------------------------------------- inputs


def _float_matrix(x: Embeddings, name: str) -> torch.Tensor:
    """A CPU float32 [N, D] tensor view (or copy) of ``x``; finite, non-empty."""
    tensor = x.detach() if isinstance(x, torch.Tensor) else _to_torch(np.asarray(x))
    require(tensor.ndim == 2 and tensor.shape[0] > 0 and tensor.shape[1] > 0,
            f"{name} must be a non-empty 2-D [n, dim] matrix, got shape {tuple(tensor.shape)}")
    require(tensor.is_floating_point(), f"{name} has dtype {tensor.dtype}; pass float "
                                        f"embeddings")
    tensor = tensor.to("cpu", torch.float32).contiguous()
    for start in range(0, len(tensor), 1 << 16):
        bad = (~torch.isfinite(tensor[start:start + (1 << 16)])).any(1).nonzero()
        if len(bad):
            raise VsekitError(f"{name} row {start + int(bad[0])} has NaN or infinite values; "
                              f"check the model that produced the embeddings")
    return tensor


@contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Torch ops run on the calling thread only (restored on exit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- score tiles


class _EmbeddingTiles:
    """Similarity tiles ``image_emb[r0:r1] @ text_emb[c0:c1].T`` as float32 numpy."""

    def __init__(self, image_emb: torch.Tensor, text_emb: torch.Tensor, half: bool) -> None:
        self.n_rows, self.n_cols = len(image_emb), len(text_emb)
        dtype = HALF_DTYPE if half else torch.float32
        self.images, self.texts = image_emb.to(dtype), text_emb.to(dtype)

    def buffer(self, size: int) -> torch.Tensor:
        """A worker's flat work buffer for tiles of ``size`` scores."""
        return torch.empty(size, dtype=self.images.dtype)

    def tile(self, r0: int, r1: int, c0: int, c1: int, buffer: torch.Tensor,
             widened: np.ndarray) -> np.ndarray:
        """Scores [r1-r0, c1-c0] as float32 numpy (in ``widened`` for bfloat16)."""
        shape = (r1 - r0, c1 - c0)
        out = buffer[: shape[0] * shape[1]].view(shape)
        torch.mm(self.images[r0:r1], self.texts[c0:c1].T, out=out)
        if out.dtype == torch.float32:
            return out.numpy()
        target = widened[: out.numel()].reshape(shape)
        torch.from_numpy(target).copy_(out)  # bfloat16 → float32 is exact
        return target


class _MatrixTiles:
    """Tiles of a given [n_rows, n_cols] score matrix, float32 (views of float32 input: never
    written)."""

    def __init__(self, sims: Embeddings) -> None:
        matrix = sims.detach().cpu() if isinstance(sims, torch.Tensor) else np.asarray(sims)
        if isinstance(matrix, torch.Tensor):
            require(matrix.is_floating_point(), f"the similarity matrix has dtype "
                                                f"{matrix.dtype}; pass float scores")
            matrix = matrix.float().numpy()
        require(matrix.ndim == 2 and matrix.shape[0] > 0 and matrix.shape[1] > 0,
                f"the similarity matrix must be 2-D [n_images, n_captions], got shape "
                f"{matrix.shape}")
        require(np.issubdtype(matrix.dtype, np.floating),
                f"the similarity matrix has dtype {matrix.dtype}; pass float scores")
        self.data = matrix
        self.n_rows, self.n_cols = matrix.shape

    def buffer(self, size: int) -> torch.Tensor:
        return torch.empty(0)

    def tile(self, r0: int, r1: int, c0: int, c1: int, buffer: torch.Tensor,
             widened: np.ndarray) -> np.ndarray:
        return np.asarray(self.data[r0:r1, c0:c1], dtype=np.float32)


# --------------------------------------------------------------------------- tiling


@dataclass
class _Layout:
    """Captions sorted by image (stable, captions without an image last), so that the GT
    captions of each block of ``tile_rows`` images form one range of sorted positions.

    Attributes:
        order: int64 [n_cols], the caption index at each sorted position.
        caption_to_image: int64 [n_cols], the image of each sorted position (-1: none).
        gt_bounds: int64 [n_blocks + 1]; block b's GT captions sit at positions
            gt_bounds[b]:gt_bounds[b + 1].
    """

    order: np.ndarray
    caption_to_image: np.ndarray
    gt_bounds: np.ndarray

    @classmethod
    def build(cls, caption_to_image: np.ndarray, n_rows: int, tile_rows: int) -> _Layout:
        """From int64 [n_cols] image indices (-1: no GT image)."""
        key = np.where(caption_to_image < 0, n_rows, caption_to_image)
        order = np.argsort(key, kind="stable")
        starts = np.minimum(np.arange(-(-n_rows // tile_rows) + 1) * tile_rows, n_rows)
        return cls(order, caption_to_image[order], np.searchsorted(key[order], starts))

    @classmethod
    def identity(cls, n_rows: int, n_cols: int, tile_rows: int) -> _Layout:
        """Captions in their own order, no GT."""
        return cls(np.arange(n_cols), np.full(n_cols, -1, dtype=np.int64),
                   np.zeros(-(-n_rows // tile_rows) + 1, dtype=np.int64))

    @property
    def sorted(self) -> bool:
        return bool((self.order == np.arange(len(self.order))).all())

    def col_tiles(self, block: int, n_cols: int, tile_cols: int
                  ) -> Iterator[tuple[int, int, bool]]:
        """(c0, c1, holds GT) for row block ``block``: the GT range and the columns before
        and after it, each cut into tiles of at most ``tile_cols``. Both passes use these
        tiles, so a GT score read in the first is bit-identical to the score it is compared
        with in the second."""
        start, stop = int(self.gt_bounds[block]), int(self.gt_bounds[block + 1])
        for lo, hi, gt in ((0, start, False), (start, stop, True), (stop, n_cols, False)):
            for c0 in range(lo, hi, tile_cols):
                yield c0, min(c0 + tile_cols, hi), gt


def _in_threads(n_blocks: int, work: Callable[[Callable[[], int | None]], T]) -> list[T]:
    """Run ``work(next_block)`` in ``torch.get_num_threads()`` threads (torch single-threaded
    meanwhile); ``next_block()`` hands out row blocks 0..n_blocks-1, then None."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for block in range(n_blocks):
        todo.put(block)
    stop = threading.Event()

    def next_block() -> int | None:
        if stop.is_set():
            return None
        try:
            return todo.get_nowait()
        except queue.Empty:
            return None

    workers = max(1, min(torch.get_num_threads(), n_blocks))
    with _single_threaded_torch(), ThreadPoolExecutor(workers) as pool:
        jobs = [pool.submit(work, next_block) for _ in range(workers)]
        try:
            return [job.result() for job in jobs]
        except BaseException:  # Ctrl-C or a worker's error: the others stop after their block
            stop.set()
            raise


# --------------------------------------------------------------------------- top-k lists


def _order_keys(scores: np.ndarray) -> np.ndarray:
    """int64 keys ordered like float32 ``scores`` (-0.0 equals +0.0), in the high 32 bits."""
    bits = (scores + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
    return ordered << 32


def _key_scores(keys: np.ndarray) -> np.ndarray:
    """The float32 scores of keys from :func:`_order_keys` (-inf for empty slots)."""
    ordered = (keys >> 32).astype(np.int32)
    bits = np.where(ordered < 0, ordered ^ np.int32(0x7FFFFFFF), ordered)
    return np.where(keys == _EMPTY_KEY, np.float32(-np.inf), bits.view(np.float32))


class _TopK:
    """Running top-k of ``n`` queries: keys int64 [n, k] (score in the high 32 bits, inverted
    candidate index in the low 32, so ties go to the lower index), best first, and ``floor``
    float32 [n], the k-th best score so far (-inf while a list has free slots): a candidate
    scoring below it cannot enter the list."""

    def __init__(self, n: int, k: int) -> None:
        self.k = k
        self.keys = np.full((n, k), _EMPTY_KEY, dtype=np.int64)
        self.floor = np.full(n, -np.inf, dtype=np.float32)

    def merge(self, start: int, queries: np.ndarray, keys: np.ndarray) -> None:
        """Merge candidate ``keys`` [P] of queries ``start + queries`` ([P], ascending) into
        their lists: one [touched, k + most candidates] block, sorted per row."""
        if not len(queries):
            return
        touched, first, counts = np.unique(queries, return_index=True, return_counts=True)
        pool = np.full((len(touched), self.k + int(counts.max())), _EMPTY_KEY, dtype=np.int64)
        pool[:, : self.k] = self.keys[start + touched]
        slot = np.arange(len(queries)) - np.repeat(first, counts)
        pool[np.repeat(np.arange(len(touched)), counts), self.k + slot] = keys
        pool.sort(axis=1)
        best = pool[:, : -self.k - 1 : -1]
        self.keys[start + touched] = best
        self.floor[start + touched] = _key_scores(best[:, -1])

    def add(self, start: int, scores: np.ndarray, candidates: np.ndarray,
            queries_on_columns: bool = False) -> None:
        """Offer float32 ``scores`` of queries start..start+n-1 against candidates with
        indices ``candidates`` int64 [C]: scores is [n, C], or [C, n] if
        ``queries_on_columns``. Only scores at or above each query's floor are keyed; a
        mostly-passing block is first cut to its k best per query with topk."""
        axis = 0 if queries_on_columns else 1  # the candidates' axis
        n = scores.shape[1 - axis]
        floor = self.floor[start:start + n]
        passing = scores >= (floor[None, :] if queries_on_columns else floor[:, None])
        index = _LOW - candidates
        if np.count_nonzero(passing) <= 4 * n * self.k:
            at = np.divmod(np.flatnonzero(passing), scores.shape[1])  # 2-D nonzero is slow
            keys = _order_keys(scores[at]) | index[at[axis]]
            queries = at[1 - axis]
            if queries_on_columns:
                order = np.argsort(queries, kind="stable")
                queries, keys = queries[order], keys[order]
        else:
            full = torch.from_numpy(_order_keys(scores) | np.expand_dims(index, 1 - axis))
            best = torch.topk(full, min(self.k, scores.shape[axis]), dim=axis).values
            best = (best.T if queries_on_columns else best).contiguous().numpy()
            queries, keys = np.repeat(np.arange(n), best.shape[1]), best.ravel()
        self.merge(start, queries, keys)

    def indices(self) -> np.ndarray:
        """Candidate indices int64 [n, k], best first."""
        return _LOW - (self.keys & _LOW)


# --------------------------------------------------------------------------- the passes


def _gt_scores(tiles: _EmbeddingTiles | _MatrixTiles, layout: _Layout, tile_rows: int,
               tile_cols: int) -> np.ndarray:
    """Each sorted caption position's GT score, read from the tiles (float32 [n_cols]; +inf
    where there is no GT image, so that no image counts as ahead)."""
    scores = np.full(tiles.n_cols, np.inf, dtype=np.float32)

    def work(next_block: Callable[[], int | None]) -> None:
        size = min(tile_rows, tiles.n_rows) * min(tile_cols, tiles.n_cols)
        buffer, widened = tiles.buffer(size), np.empty(size, dtype=np.float32)
        while (block := next_block()) is not None:
            r0, r1 = block * tile_rows, min((block + 1) * tile_rows, tiles.n_rows)
            for c0, c1, gt in layout.col_tiles(block, tiles.n_cols, tile_cols):
                if gt:
                    tile = tiles.tile(r0, r1, c0, c1, buffer, widened)
                    rows = layout.caption_to_image[c0:c1] - r0
                    scores[c0:c1] = tile[rows, np.arange(c1 - c0)]

    _in_threads(-(-tiles.n_rows // tile_rows), work)
    return scores


def _scan(tiles: _EmbeddingTiles | _MatrixTiles, layout: _Layout, ranks: bool, top_k: int, *,
          tile_rows: int, tile_cols: int, progress: bool) -> StreamResult:
    """Ranks (if ``ranks``; needs a layout with GT) and top-k lists (if ``top_k`` > 0) of
    every query, in the callers' caption order."""
    n_rows, n_cols = tiles.n_rows, tiles.n_cols
    n_blocks = -(-n_rows // tile_rows)
    k_rows, k_cols = min(top_k, n_cols), min(top_k, n_rows)
    if ranks:
        col_thresholds = _gt_scores(tiles, layout, tile_rows, tile_cols)
        has_gt = layout.caption_to_image >= 0
        row_thresholds = np.full(n_rows, -np.inf, dtype=np.float32)
        np.maximum.at(row_thresholds, layout.caption_to_image[has_gt], col_thresholds[has_gt])
    row_counts = np.zeros(n_rows, dtype=np.int64)
    row_top = _TopK(n_rows, k_rows)
    lock = threading.Lock()
    bar = tqdm(total=n_rows * n_cols, desc="similarities", unit="sim", unit_scale=True,
               disable=not progress, leave=False)

    def work(next_block: Callable[[], int | None]) -> tuple[np.ndarray, _TopK, bool]:
        size = min(tile_rows, n_rows) * min(tile_cols, n_cols)
        buffer, widened = tiles.buffer(size), np.empty(size, dtype=np.float32)
        mask = np.empty(size, dtype=bool)
        col_counts = np.zeros(n_cols if ranks else 0, dtype=np.int64)
        col_top = _TopK(n_cols if top_k else 0, k_cols)
        has_nan = False
        while (block := next_block()) is not None:
            r0, r1 = block * tile_rows, min((block + 1) * tile_rows, n_rows)
            for c0, c1, _ in layout.col_tiles(block, n_cols, tile_cols):
                tile = tiles.tile(r0, r1, c0, c1, buffer, widened)
                has_nan |= bool(np.isnan(tile.max()))  # max propagates NaN
                if ranks:
                    rows, cols = count_block(tile, row_thresholds[r0:r1],
                                             col_thresholds[c0:c1],
                                             mask[: tile.size].reshape(tile.shape))
                    row_counts[r0:r1] += rows
                    col_counts[c0:c1] += cols
                if top_k:  # ties go to the lower index in the callers' caption order
                    row_top.add(r0, tile, layout.order[c0:c1])
                    col_top.add(c0, tile, np.arange(r0, r1), queries_on_columns=True)
            with lock:
                bar.update((r1 - r0) * n_cols)
        return col_counts, col_top, has_nan

    try:
        parts = _in_threads(n_blocks, work)
    finally:
        bar.close()
    require(not any(part[2] for part in parts),
            "the similarities contain NaN; check the embeddings or scores for NaN (e.g. a "
            "diverged model) before evaluating")
    result = StreamResult()
    if ranks:
        result.i2t_ranks = np.where(np.isfinite(row_thresholds), row_counts, -1)
        result.t2i_ranks = np.empty(n_cols, dtype=np.int64)
        result.t2i_ranks[layout.order] = sum(part[0] for part in parts)
    if top_k:
        col_top = parts[0][1]
        for part in parts[1:]:
            col_top.merge(0, np.repeat(np.arange(n_cols), k_cols), part[1].keys.ravel())
        result.i2t_top = row_top.indices()
        result.t2i_top = np.empty((n_cols, k_cols), dtype=np.int64)
        result.t2i_top[layout.order] = col_top.indices()
    return result


def _tile_sizes(tile_rows: int | None, tile_cols: int | None) -> tuple[int, int]:
    sizes = (TILE_ROWS if tile_rows is None else tile_rows,
             TILE_COLS if tile_cols is None else tile_cols)
    for size in sizes:
        require(isinstance(size, int) and not isinstance(size, bool) and size >= 1,
                f"tile sizes must be positive integers, got {size!r}")
    return sizes


# --------------------------------------------------------------------------- public API


def _rank_pass(images: torch.Tensor, texts: torch.Tensor, caption_to_image: np.ndarray, *,
               top_k: int, half: bool, tile_rows: int, tile_cols: int, progress: bool
               ) -> StreamResult:
    """Ranks (and top-k lists) of checked CPU float32 embeddings; ``caption_to_image`` int64
    [n_captions] may hold -1 (a caption with no GT image: its t2i rank is meaningless)."""
    layout = _Layout.build(caption_to_image, len(images), tile_rows)
    tiles = _EmbeddingTiles(images, texts if layout.sorted else texts[layout.order], half)
    return _scan(tiles, layout, True, top_k, tile_rows=tile_rows, tile_cols=tile_cols,
                 progress=progress)


def _checked(image_emb: Embeddings, text_emb: Embeddings,
             caption_to_image: Sequence[int] | np.ndarray | torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    images, texts = _float_matrix(image_emb, "image_emb"), _float_matrix(text_emb, "text_emb")
    require(images.shape[1] == texts.shape[1],
            f"image embeddings are {images.shape[1]}-d but caption embeddings are "
            f"{texts.shape[1]}-d; encode both with the same model")
    return images, texts, caption_map(caption_to_image, len(images), len(texts)).numpy()


def streaming_ranks(image_emb: Embeddings, text_emb: Embeddings,
                    caption_to_image: Sequence[int] | np.ndarray | torch.Tensor, *,
                    top_k: int = 0, half: bool = False, tile_rows: int | None = None,
                    tile_cols: int | None = None, progress: bool = False) -> StreamResult:
    """Exact i2t/t2i ranks (and optionally top-k lists) without the full similarity matrix.

    Args:
        image_emb: float [n_images, D] (numpy or torch; evaluated on CPU).
        text_emb: float [n_captions, D].
        caption_to_image: int [n_captions], each caption's image index.
        top_k: also return each query's ``top_k`` best candidates (0: none).
        half: similarities in bfloat16 (see the module docstring and
            :func:`half_agreement`).
        tile_rows, tile_cols: tile shape (default 256 × 4096 scores).
        progress: tqdm bar over the similarities.

    Returns:
        :class:`StreamResult`; ranks as :func:`vsekit.eval.retrieval_ranks` gives them.

    Raises:
        VsekitError: bad shapes, a non-finite embedding, an out-of-range caption index.
    """
    images, texts, mapping = _checked(image_emb, text_emb, caption_to_image)
    rows, cols = _tile_sizes(tile_rows, tile_cols)
    require(isinstance(top_k, int) and top_k >= 0, f"top_k must be >= 0, got {top_k!r}")
    return _rank_pass(images, texts, mapping, top_k=top_k, half=half, tile_rows=rows,
                      tile_cols=cols, progress=progress)


def top_k_lists(sims: Embeddings, k_captions: int, k_images: int, *,
                tile_rows: int | None = None, tile_cols: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Best candidates of every query of a given score matrix, ties by lower index first.

    Args:
        sims: float [n_images, n_captions] (numpy or torch; compared in float32).
        k_captions: list length per image (clipped to n_captions).
        k_images: list length per caption (clipped to n_images).

    Returns:
        (caption indices int64 [n_images, k_captions], image indices int64 [n_captions,
        k_images]), best first.
    """
    tiles = _MatrixTiles(sims)
    rows, cols = _tile_sizes(tile_rows, tile_cols)
    k = max(k_captions, k_images)
    require(k >= 1, f"list lengths must be positive, got {k_captions} and {k_images}")
    layout = _Layout.identity(tiles.n_rows, tiles.n_cols, rows)
    result = _scan(tiles, layout, False, k, tile_rows=rows, tile_cols=cols, progress=False)
    return result.i2t_top[:, :k_captions], result.t2i_top[:, :k_images]


def streaming_metrics(image_emb: Embeddings, text_emb: Embeddings,
                      caption_to_image: Sequence[int] | np.ndarray | torch.Tensor, *,
                      half: bool = False, progress: bool = False) -> dict[str, float]:
    """R@1/5/10, medr, meanr, rsum (as :func:`vsekit.eval.retrieval_metrics`) by streaming.

    With ``half``, first compares bfloat16 with float32 on sampled queries
    (:func:`half_agreement`; its ``half_*`` keys are added) and raises :class:`VsekitError`
    if more than ``100 - HALF_MIN_AGREEMENT`` percent of them change their R@1/5/10 outcome.
    """
    extra = check_half(image_emb, text_emb, caption_to_image, progress=progress) if half else {}
    result = streaming_ranks(image_emb, text_emb, caption_to_image, half=half,
                             progress=progress)
    return {**metrics_from_ranks(result.i2t_ranks, result.t2i_ranks), **extra}


def half_agreement(image_emb: Embeddings, text_emb: Embeddings,
                   caption_to_image: Sequence[int] | np.ndarray | torch.Tensor, *,
                   sample: int = HALF_SAMPLE, seed: int = 0, progress: bool = False
                   ) -> dict[str, float]:
    """How bfloat16 similarities change ranks, on ``sample`` random queries per direction.

    Each sampled image (among those with a caption) is ranked against all captions and each
    sampled caption against all images, once in float32 and once in bfloat16.

    Returns:
        ``half_sample_queries`` (queries compared), ``half_rank_agreement`` (percent with the
        same rank) and ``half_recall_agreement`` (percent whose hit at every K in 1, 5, 10 is
        the same).
    """
    images, texts, mapping = _checked(image_emb, text_emb, caption_to_image)
    rng = np.random.default_rng(seed)
    with_caption = np.flatnonzero(np.bincount(mapping, minlength=len(images)))
    queried = np.sort(rng.choice(with_caption, min(sample, len(with_caption)), replace=False))
    captions = np.sort(rng.choice(len(texts), min(sample, len(texts)), replace=False))
    position = np.full(len(images), -1, dtype=np.int64)
    position[queried] = np.arange(len(queried))
    ranks = []
    for half in (False, True):
        options = {"top_k": 0, "half": half, "tile_rows": TILE_ROWS, "tile_cols": TILE_COLS,
                   "progress": progress}
        i2t = _rank_pass(images[queried], texts, position[mapping], **options).i2t_ranks
        t2i = _rank_pass(images, texts[captions], mapping[captions], **options).t2i_ranks
        ranks.append(np.concatenate([i2t, t2i]))
    full, rounded = ranks
    same_hits = np.ones(len(full), dtype=bool)
    for k in DEFAULT_KS:
        same_hits &= (full < k) == (rounded < k)
    return {"half_sample_queries": float(len(full)),
            "half_rank_agreement": 100.0 * float(np.mean(full == rounded)),
            "half_recall_agreement": 100.0 * float(np.mean(same_hits))}


def check_half(image_emb: Embeddings, text_emb: Embeddings,
               caption_to_image: Sequence[int] | np.ndarray | torch.Tensor, *,
               progress: bool = False) -> dict[str, float]:
    """:func:`half_agreement`, raising :class:`VsekitError` below ``HALF_MIN_AGREEMENT``."""
    found = half_agreement(image_emb, text_emb, caption_to_image, progress=progress)
    agreement = found["half_recall_agreement"]
    require(agreement >= HALF_MIN_AGREEMENT,
            f"bfloat16 similarities change the R@1/5/10 outcome of {100 - agreement:.2f}% of "
            f"{int(found['half_sample_queries'])} sampled queries (at most "
            f"{100 - HALF_MIN_AGREEMENT:g}% allowed); evaluate without --half")
    return found
