"""ECCV Caption and CxC metrics on the COCO 5K test split (docs/methods.md §3.3).

The positives come from the ``eccv-caption`` package's data files (read directly: importing
the package is not needed): the ECCV Caption extended positives, the Crisscrossed Captions
(CxC) positives, the original COCO pairs, and the COCO caption ids of the 25,000 Karpathy 5K
test captions in file order.

Per query with R known positives (R counts every listed positive, also the two ECCV caption
positives outside the 25,000 test captions, as the package does) and a ranked list L:
Prec@r = positives in L[:r] / r; mAP@R = (1/R) Σ_{r≤R} Prec@r·[L[r] positive];
R-P = Prec@R; R@K = [a positive in L[:K]]. Averaged over the package's queries (ECCV: 1,261
image and 1,332 caption queries; CxC: every query with a CxC positive) and reported in
percent. Lists are the top max(R, 10) candidates by score, ties by lower index (see
:func:`vsekit.eval.streaming.top_k_lists`), computed tile by tile; the metrics are then
vectorised over queries.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vsekit.data.dataset import RetrievalSplit
from vsekit.errors import VsekitError, require
from vsekit.eval.streaming import top_k_lists

CXC_KS = (1, 5, 10)
COCO_5K = (5000, 25000)


@dataclass(frozen=True)
class Positives:
    """Positive sets of one direction: ``queries`` int64 [Q] ids; the positives of query q are
    ``items[starts[q]:starts[q + 1]]`` (unique ids)."""

    queries: np.ndarray
    items: np.ndarray
    starts: np.ndarray

    @classmethod
    def from_json(cls, path: Path) -> Positives:
        mapping = json.loads(path.read_text(encoding="utf-8"))
        queries = np.array([int(q) for q in mapping], dtype=np.int64)
        sets = [np.unique(np.asarray(v, dtype=np.int64)) for v in mapping.values()]
        starts = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
        return cls(queries, np.concatenate(sets), starts)

    @property
    def counts(self) -> np.ndarray:
        """R per query, int64 [Q]."""
        return np.diff(self.starts)


@dataclass(frozen=True)
class EccvData:
    """The package's tables: caption ids in 5K test file order and positives per direction."""

    caption_ids: np.ndarray  # int64 [25000]
    caption_image: dict[int, int]  # COCO caption id → its COCO image id
    eccv_i2t: Positives
    eccv_t2i: Positives
    cxc_i2t: Positives
    cxc_t2i: Positives

    @property
    def image_ids(self) -> np.ndarray:
        """COCO image ids of the 5,000 test images in file order (one per 5 captions)."""
        return np.array([self.caption_image[int(c)] for c in self.caption_ids[::5]],
                        dtype=np.int64)


@functools.cache
def eccv_data() -> EccvData:
    """Load the ``eccv-caption`` package's data (once per process)."""
    spec = importlib.util.find_spec("eccv_caption")
    if spec is None or not spec.submodule_search_locations:
        raise VsekitError("ECCV Caption metrics need the eccv-caption package; install it "
                          "with pip install eccv-caption")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    original = json.loads((folder / "original_caption_to_image.json").read_text())
    return EccvData(
        caption_ids=np.load(folder / "coco_test_ids.npy").astype(np.int64),
        caption_image={int(c): int(images[0]) for c, images in original.items()},
        eccv_i2t=Positives.from_json(folder / "eccv_image_to_caption.json"),
        eccv_t2i=Positives.from_json(folder / "eccv_caption_to_image.json"),
        cxc_i2t=Positives.from_json(folder / "cxc_image_to_caption.json"),
        cxc_t2i=Positives.from_json(folder / "cxc_caption_to_image.json"),
    )


# --------------------------------------------------------------------------- metrics


def _as_ids(ids: Sequence[int] | np.ndarray | torch.Tensor, n: int, what: str) -> np.ndarray:
    array = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    require(array.shape == (n,), f"{what} must hold one COCO id per {what.split()[0]} "
                                 f"({n}), got shape {array.shape}")
    require(np.issubdtype(array.dtype, np.integer), f"{what} must be integer COCO ids, got "
                                                    f"dtype {array.dtype}")
    require(len(np.unique(array)) == n, f"{what} repeat an id; pass each COCO id once")
    return array.astype(np.int64)


def hits(ranked: np.ndarray, positives: Positives, rows: np.ndarray) -> np.ndarray:
    """bool [Q, k]: is ``ranked[rows[q], r]`` (an item id) a positive of query q."""
    lists = ranked[rows]
    span = int(max(lists.max(initial=0), positives.items.max(initial=0))) + 1
    owner = np.repeat(np.arange(len(positives.queries)), positives.counts)
    keys = np.sort(owner * span + positives.items)
    return np.isin(np.arange(len(rows))[:, None] * span + lists, keys,
                   assume_unique=False)


def _query_rows(positives: Positives, ids: np.ndarray, what: str) -> np.ndarray:
    """Index of each query id among ``ids``; every query must be there."""
    order = np.argsort(ids)
    where = np.searchsorted(ids[order], positives.queries)
    where = np.minimum(where, len(ids) - 1)
    found = ids[order][where] == positives.queries
    if not found.all():
        missing = int(positives.queries[np.argmin(found)])
        raise VsekitError(f"{what} id {missing} (an ECCV/CxC query) is not among the ids "
                          f"given; evaluate the whole COCO 5K test split with its COCO ids")
    return order[where]


def _eccv_direction(hit: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """mAP@R, R-P and R@1 (percent) from hits [Q, k ≥ max R] and R per query [Q]."""
    require(hit.shape[1] >= counts.max(), "ranked lists shorter than the largest R")
    depth = np.arange(1, hit.shape[1] + 1)
    precision = np.cumsum(hit, axis=1) / depth
    within = depth[None, :] <= counts[:, None]
    average_precision = (precision * hit * within).sum(1) / counts
    r_precision = precision[np.arange(len(counts)), counts - 1]
    return {"map_at_r": 100.0 * float(average_precision.mean()),
            "r_precision": 100.0 * float(r_precision.mean()),
            "r1": 100.0 * float(hit[:, 0].mean())}


def eccv_from_rankings(i2t_top: np.ndarray, t2i_top: np.ndarray,
                       image_ids: Sequence[int] | np.ndarray,
                       caption_ids: Sequence[int] | np.ndarray) -> dict[str, float]:
    """ECCV Caption and CxC metrics from ranked lists (see :func:`eccv_metrics`).

    Args:
        i2t_top: int [n_images, ≥ k_i2t] caption indices per image, best first.
        t2i_top: int [n_captions, ≥ k_t2i] image indices per caption, best first.
        image_ids, caption_ids: COCO ids of the images and captions (indices → ids).
    """
    data = eccv_data()
    image_ids = _as_ids(image_ids, len(i2t_top), "image ids")
    caption_ids = _as_ids(caption_ids, len(t2i_top), "caption ids")
    i2t_ids, t2i_ids = caption_ids[i2t_top], image_ids[t2i_top]
    out: dict[str, float] = {}
    for direction, ranked, ids, what in (("i2t", i2t_ids, image_ids, "image"),
                                         ("t2i", t2i_ids, caption_ids, "caption")):
        eccv: Positives = getattr(data, f"eccv_{direction}")
        found = _eccv_direction(hits(ranked, eccv, _query_rows(eccv, ids, what)), eccv.counts)
        out.update({f"eccv_{direction}_{name}": value for name, value in found.items()})
        cxc: Positives = getattr(data, f"cxc_{direction}")
        cxc_hits = hits(ranked, cxc, _query_rows(cxc, ids, what))
        for k in CXC_KS:
            out[f"cxc_{direction}_r{k}"] = 100.0 * float(cxc_hits[:, :k].any(1).mean())
    for name in ("map_at_r", "r_precision", "r1"):
        out[f"eccv_{name}"] = (out[f"eccv_i2t_{name}"] + out[f"eccv_t2i_{name}"]) / 2
    out["cxc_rsum"] = sum(out[f"cxc_{d}_r{k}"] for d in ("i2t", "t2i") for k in CXC_KS)
    return out


def list_lengths() -> tuple[int, int]:
    """(captions per image list, images per caption list) that the metrics need."""
    data = eccv_data()
    return (int(max(data.eccv_i2t.counts.max(), max(CXC_KS))),
            int(max(data.eccv_t2i.counts.max(), max(CXC_KS))))


def eccv_metrics(sims: np.ndarray | torch.Tensor, image_ids: Sequence[int] | np.ndarray,
                 caption_ids: Sequence[int] | np.ndarray) -> dict[str, float]:
    """ECCV Caption and CxC metrics of a COCO 5K test similarity matrix, in percent.

    Args:
        sims: float [n_images, n_captions] scores (numpy or torch), compared in float32.
        image_ids: int [n_images] COCO image id of each row.
        caption_ids: int [n_captions] COCO caption id of each column (for the standard
            25,000-caption file: :func:`coco_5k_ids`).

    Returns:
        ``eccv_{i2t,t2i}_{map_at_r,r_precision,r1}`` and their means ``eccv_map_at_r``,
        ``eccv_r_precision``, ``eccv_r1``; ``cxc_{i2t,t2i}_r{1,5,10}`` and ``cxc_rsum``.

    Raises:
        VsekitError: the package is missing, ids are malformed, or an ECCV/CxC query id is
            not among the given ids.
    """
    k_captions, k_images = list_lengths()
    i2t_top, t2i_top = top_k_lists(sims, k_captions, k_images)
    return eccv_from_rankings(i2t_top, t2i_top, image_ids, caption_ids)


def coco_5k_ids(split: RetrievalSplit) -> tuple[np.ndarray, np.ndarray]:
    """(image ids [5000], caption ids [25000]) of a COCO 5K test split in file order.

    The split must have 5,000 images and 25,000 captions, 5 consecutive captions per image
    (the standard test caption file). Its image ids must be the COCO ids in the file's order,
    or the precomp format's placeholders ``{split}-{i}`` (no ids file: file order assumed).

    Raises:
        VsekitError: the sizes, caption order or image ids do not match the 5K test file.
    """
    data = eccv_data()
    n_images, n_captions = COCO_5K
    require((split.n_images, split.n_captions) == COCO_5K,
            f"ECCV Caption / CxC need the COCO 5K test split ({n_images:,} images × "
            f"{n_captions:,} captions), but split {split.name!r} has {split.n_images:,} × "
            f"{split.n_captions:,}; evaluate the 5K split (precomp 'testall')")
    require(bool((split.caption_to_image == np.arange(n_captions) // 5).all()),
            f"split {split.name!r} does not list 5 consecutive captions per image in image "
            f"order; ECCV Caption needs the captions in the standard 5K test file order")
    expected = data.image_ids
    placeholders = [f"{split.name}-{i}" for i in range(n_images)]
    if list(split.image_ids) != placeholders:
        given = np.array([int(i) if str(i).isdigit() else -1 for i in split.image_ids])
        wrong = np.flatnonzero(given != expected)
        if len(wrong):
            i = int(wrong[0])
            raise VsekitError(f"image {i} of split {split.name!r} has id "
                              f"{split.image_ids[i]!r} but the COCO 5K test file has image "
                              f"{expected[i]} there; ECCV Caption needs the COCO 5K test "
                              f"images with their COCO ids, in the standard order")
    return expected, data.caption_ids.copy()
