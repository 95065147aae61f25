"""FAISS indexes over unit-norm embeddings, saved with the list of what each row is.

Scores are inner products (cosine similarities for the L2-normalised embeddings of a
:class:`~vsekit.models.vse.VSEModel`). Kinds:

- ``flat``: exact search (``IndexFlatIP``), the default.
- ``ivf``: IVF-Flat; k-means cells (``nlist``), ``nprobe`` cells visited per query.
- ``hnsw``: HNSW graph with ``hnsw_m`` links per node, ``ef_construction`` / ``ef_search``
  candidate lists when building / searching.

An index on disk is a folder: ``index.faiss`` (the FAISS index), ``items.json`` (one JSON
object per row: image id and path, or caption and its image id) and ``meta.json`` (kind,
parameters, size, and whatever the builder records: run, checkpoint, recall@10).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from vsekit.errors import VsekitError, require
from vsekit.train.checkpoint import atomic_write_bytes

FORMAT = "vsekit-search-index"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.json"
META_FILE = "meta.json"
KINDS = ("flat", "ivf", "hnsw")
MIN_POINTS_PER_CELL = 39  # FAISS k-means wants at least this many training points per cell


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build and its parameters (see the module docstring).

    ``nlist`` None picks :func:`default_nlist`; ``nprobe`` above ``nlist`` visits every cell.
    """

    kind: Literal["flat", "ivf", "hnsw"] = "flat"
    nlist: int | None = None
    nprobe: int = 8
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 64

    def validate(self, n_items: int | None = None) -> None:
        """VsekitError naming the first bad parameter (``nlist`` too, for ``n_items`` rows)."""
        require(self.kind in KINDS, f"index kind must be one of {', '.join(KINDS)}, got "
                                    f"{self.kind!r}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            require(value >= 1, f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.nlist is not None:
            require(self.nlist >= 1, f"--nlist must be at least 1, got {self.nlist}")
            require(n_items is None or self.nlist <= n_items,
                    f"--nlist must be at most the number of items ({n_items}), got {self.nlist}")


def default_nlist(n_items: int) -> int:
    """IVF cells for ``n_items`` vectors: about 4·√N, but at most N / 39 (k-means needs ~39
    points a cell), and at least 1."""
    return max(1, min(round(4 * math.sqrt(n_items)), n_items // MIN_POINTS_PER_CELL))


def check_matrix(array: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """``array`` as a C-contiguous float32 [N, D] with N ≥ 1, finite, and D == ``dim`` when
    given; else VsekitError naming ``what``."""
    array = np.asarray(array)
    require(array.ndim == 2 and array.shape[0] > 0 and array.shape[1] > 0,
            f"{what} must be a non-empty [N, D] matrix, got shape {array.shape}")
    if dim is not None:
        require(array.shape[1] == dim,
                f"{what} are {array.shape[1]}-d but the index holds {dim}-d vectors; query it "
                "with the run that built it (or rebuild the index with this run)")
    array = np.ascontiguousarray(array, dtype=np.float32)
    require(bool(np.isfinite(array).all()), f"{what} contain NaN or Inf values")
    return array


def build_faiss_index(emb: np.ndarray, spec: IndexSpec, seed: int = 0) -> faiss.Index:
    """A FAISS inner-product index of kind ``spec.kind`` holding the rows of ``emb`` [N, D]
    (row i gets id i). IVF k-means draws from ``seed``."""
    emb = check_matrix(emb, "embeddings")
    n, dim = emb.shape
    spec.validate(n)
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        nlist = spec.nlist or default_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.min_points_per_centroid = 1  # nlist ≤ N is checked; no k-means warning
        index.train(emb)
    index.add(emb)
    set_search_params(index, nprobe=spec.nprobe, ef_search=spec.ef_search)
    return index


def set_search_params(index: faiss.Index, *, nprobe: int | None = None,
                      ef_search: int | None = None) -> None:
    """Set ``nprobe`` (IVF) / ``efSearch`` (HNSW) where ``index`` has them; None keeps them."""
    for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
        require(value is None or value >= 1,
                f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if nprobe is not None and isinstance(index, faiss.IndexIVF):
        index.nprobe = min(nprobe, index.nlist)
    if ef_search is not None and isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = ef_search


def search_faiss(index: faiss.Index, queries: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows for each query [Q, D]: (scores float32 [Q, k'], ids int64 [Q, k']),
    best first, k' = min(k, N). An approximate index may return fewer hits: id -1 there."""
    require(isinstance(k, int | np.integer) and k >= 1, f"k must be at least 1, got {k}")
    queries = check_matrix(queries, "query embeddings", index.d)
    k = min(int(k), index.ntotal)
    require(k >= 1, "the index is empty; rebuild it with some items")
    scores, ids = index.search(queries, k)
    return scores, ids.astype(np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of the fraction of the true top-k ids ``truth`` [Q, k] that appear in
    ``found`` [Q, k_found]; ids -1 (no hit) match nothing and are not counted in ``truth``.

    1.0 when every query has no true hit at all (nothing could be missed).
    """
    found, truth = np.asarray(found), np.asarray(truth)
    require(found.ndim == 2 and truth.ndim == 2 and len(found) == len(truth),
            f"found and truth must be [Q, k] with the same Q, got {found.shape} and "
            f"{truth.shape}")
    valid = truth >= 0
    hit = (truth[:, :, None] == found[:, None, :]).any(axis=2) & valid
    counts = valid.sum(axis=1)
    per_query = np.where(counts > 0, hit.sum(axis=1) / np.maximum(counts, 1), 1.0)
    return float(per_query.mean()) if len(per_query) else 1.0


def drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Leave-one-out results: each row of ``ids`` [Q, k+1] without the first occurrence of its
    ``self_ids`` [Q] entry (else without its last entry), cut to ``k`` columns → [Q, k]."""
    ids = np.asarray(ids)
    is_self = ids == np.asarray(self_ids)[:, None]
    first = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    keep = np.ones(ids.shape, dtype=bool)
    keep[np.arange(len(ids)), first] = False
    return ids[keep].reshape(len(ids), ids.shape[1] - 1)[:, :k]


def approx_recall(index: faiss.Index, emb: np.ndarray, queries: np.ndarray, k: int = 10,
                  self_ids: np.ndarray | None = None) -> float:
    """Recall@``k`` of ``index`` (built on ``emb`` [N, D]) against exact inner-product search
    for ``queries`` [Q, D]. With ``self_ids`` [Q] the queries are rows of ``emb`` and those
    rows are left out of both result lists (leave-one-out)."""
    exact = build_faiss_index(emb, IndexSpec("flat"))
    extra = 0 if self_ids is None else 1
    k = min(k, len(emb) - extra)
    if k < 1:
        return 1.0
    _, truth = search_faiss(exact, queries, k + extra)
    _, found = search_faiss(index, queries, k + extra)
    if self_ids is not None:
        truth, found = drop_self(truth, self_ids, k), drop_self(found, self_ids, k)
    return recall_at_k(found, truth)


@dataclass
class SearchIndex:
    """A FAISS index, one item (JSON object) per row, and metadata (JSON object)."""

    faiss_index: faiss.Index
    items: list[dict[str, Any]]
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        require(len(self.items) == self.faiss_index.ntotal,
                f"{len(self.items)} items for an index of {self.faiss_index.ntotal} rows")

    @property
    def dim(self) -> int:
        return int(self.faiss_index.d)

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """For each query [Q, D], its hits best first: ``{"rank", "score", **item}``."""
        scores, ids = search_faiss(self.faiss_index, queries, k)
        return [[{"rank": rank, "score": float(score), **self.items[i]}
                 for rank, (score, i) in enumerate(zip(row_scores, row_ids, strict=True), 1)
                 if i >= 0]
                for row_scores, row_ids in zip(scores, ids, strict=True)]

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write the index folder (atomically per file); an existing index needs ``overwrite``."""
        folder = Path(folder)
        check_out_folder(folder, overwrite)
        meta = {**self.meta, "format": FORMAT, "version": FORMAT_VERSION, "dim": self.dim,
                "count": len(self)}
        atomic_write_bytes(folder / INDEX_FILE, faiss.serialize_index(self.faiss_index).tobytes())
        atomic_write_bytes(folder / ITEMS_FILE, json.dumps(self.items, ensure_ascii=False,
                                                           indent=0).encode("utf-8"))
        atomic_write_bytes(folder / META_FILE, (json.dumps(meta, indent=2, sort_keys=True)
                                                + "\n").encode("utf-8"))
        self.meta = meta
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SearchIndex:
        """Read an index folder written by :meth:`save`; one-line errors when it is missing or
        damaged."""
        folder = Path(folder)
        require(folder.is_dir(), f"index {str(folder)!r} not found; build one with vsekit index "
                                 "build RUN_DIR --images SOURCE --out FOLDER")
        require((folder / META_FILE).is_file(),
                f"{str(folder)!r} is not a vsekit index (no {META_FILE}); build one with vsekit "
                "index build")
        damaged = f"index {str(folder)!r} is damaged"
        meta, items = (_read_json(folder / name, damaged) for name in (META_FILE, ITEMS_FILE))
        require(isinstance(meta, dict) and meta.get("format") == FORMAT,
                f"{damaged} ({META_FILE} is not a {FORMAT} description); rebuild it")
        require(meta.get("version") == FORMAT_VERSION,
                f"index {str(folder)!r} has format version {meta.get('version')}, this vsekit "
                f"reads version {FORMAT_VERSION}; rebuild it")
        require(isinstance(items, list) and all(isinstance(item, dict) for item in items),
                f"{damaged} ({ITEMS_FILE} must be a list of objects); rebuild it")
        try:
            data = np.frombuffer((folder / INDEX_FILE).read_bytes(), dtype=np.uint8)
            index = faiss.deserialize_index(data)
        except (OSError, RuntimeError) as exc:
            raise VsekitError(f"{damaged} ({INDEX_FILE} cannot be read: "
                              f"{str(exc).strip().splitlines()[-1][:120]}); rebuild it") from None
        require(index.ntotal == len(items) == meta.get("count") and index.d == meta.get("dim"),
                f"{damaged} ({INDEX_FILE} holds {index.ntotal} {index.d}-d vectors, {ITEMS_FILE} "
                f"{len(items)} items, {META_FILE} says {meta.get('count')} of "
                f"{meta.get('dim')}-d); rebuild it")
        return cls(index, items, meta)


def check_out_folder(folder: Path, overwrite: bool) -> None:
    """VsekitError unless an index can be written to ``folder`` (an existing index only with
    ``overwrite``)."""
    require(not folder.exists() or folder.is_dir(),
            f"{str(folder)!r} is a file; choose a folder name for the index")
    if (folder / META_FILE).exists() and not overwrite:
        raise VsekitError(f"{str(folder)!r} already holds an index; pass --force to replace it "
                          "or choose another --out")


def spec_meta(spec: IndexSpec, index: faiss.Index) -> dict[str, Any]:
    """Kind and the parameters that apply to it (nlist and nprobe as built), for metadata."""
    if spec.kind == "ivf":
        params = {"nlist": int(index.nlist), "nprobe": int(index.nprobe)}
    elif spec.kind == "hnsw":
        params = {"hnsw_m": spec.hnsw_m, "ef_construction": spec.ef_construction,
                  "ef_search": spec.ef_search}
    else:
        params = {}
    return {"kind": spec.kind, "params": params}


def _read_json(path: Path, damaged: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VsekitError(f"{damaged} ({path.name} is missing); rebuild it") from None
    except (OSError, ValueError) as exc:
        raise VsekitError(f"{damaged} ({path.name}: {type(exc).__name__}); rebuild it") from None
