"""Build a search index with a trained run, and query it.

An *image index* holds image embeddings and answers text queries (text → image); a
*caption index* holds caption embeddings and answers image queries (image → text). The
index records the run directory, checkpoint and data shape, so a query is embedded by the
same model without loading the dataset (except to look up an image id).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vsekit import __version__
from vsekit.config import Config
from vsekit.data import RetrievalSplit, load_splits
from vsekit.data.dataset import ImageStore
from vsekit.data.formats._io import load_float_array, read_nonblank_lines
from vsekit.errors import VsekitError, require
from vsekit.eval.run import load_run_model
from vsekit.models.base import ModelContext
from vsekit.models.vse import context_from_split
from vsekit.search.encode import (
    RunModel,
    check_query_words,
    encode_captions,
    encode_images,
    encode_texts,
    image_file_store,
    shaped_split,
)
from vsekit.search.index import (
    IndexSpec,
    SearchIndex,
    approx_recall,
    build_faiss_index,
    check_out_folder,
    set_search_params,
    spec_meta,
)
from vsekit.train.run_dir import load_run_config

ALL_SPLITS = "all"
RECALL_K = 10
Items = list[dict[str, Any]]


def _run_model(run_dir: Path, config: Config, split: RetrievalSplit, checkpoint: str,
               progress: bool) -> RunModel:
    model = load_run_model(run_dir, config, split, checkpoint).eval()
    context = context_from_split(config.model, split, with_captions=False)
    return RunModel(model, context, config.data, config.eval.batch_size, progress)


def _splits_named(name: str, splits: dict[str, RetrievalSplit]) -> list[RetrievalSplit] | None:
    """The split called ``name``, every split for ``all``, None for another name."""
    if name == ALL_SPLITS:
        return list(splits.values())
    return [splits[name]] if name in splits else None


def _not_found(option: str, source: str, what: str, splits: dict[str, RetrievalSplit]) -> str:
    names = ", ".join([*splits, ALL_SPLITS])
    return (f"{option} {source!r} is neither {what} nor a split of the run's dataset ({names}); "
            "check the path or the split name")


def image_items(run: RunModel, source: str, splits: dict[str, RetrievalSplit]
                ) -> tuple[np.ndarray, Items, list[RetrievalSplit]]:
    """Embed the images of ``source`` (an image folder, a ``.npy`` features file with its
    ``.txt`` list of names beside it, a split name or ``all``).

    Returns (embeddings [N, D], one ``{"id", "path", "split"}`` item per row, the splits used
    (empty unless ``source`` names splits)).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        from vsekit.models.features import list_images

        files = list_images(path)
        items = [{"id": f.name, "path": str(f.resolve()), "split": None} for f in files]
        return encode_images(run, image_file_store(run, files)), items, []
    if path.is_file() and path.suffix == ".npy":
        return (*_feature_file_items(run, path), [])
    parts = _splits_named(source, splits)
    require(parts is not None, _not_found("--images", source, "an image folder or a .npy "
                                          "features file", splits))
    items = [{"id": split.image_ids[i],
              "path": str(split.images.files[i]) if split.images.kind == "files" else None,
              "split": split.name} for split in parts for i in range(split.n_images)]
    return np.concatenate([encode_images(run, split.images) for split in parts]), items, parts


def _feature_file_items(run: RunModel, path: Path) -> tuple[np.ndarray, Items]:
    require(run.context.image_kind == "features",
            f"the run's image encoder reads {run.context.image_kind}, not precomputed features; "
            "pass a folder of images instead of a .npy file")
    features = load_float_array(path, (2, 3))
    dim = run.context.image_feature_dim
    require(features.shape[-1] == dim,
            f"{path} holds {features.shape[-1]}-d features but the run was trained on {dim}-d "
            "ones; extract them the same way as the run's training features")
    names_file = path.with_suffix(".txt")
    names = (read_nonblank_lines(names_file, "an image file name") if names_file.is_file()
             else [f"row {i}" for i in range(len(features))])
    require(len(names) == len(features),
            f"{names_file} lists {len(names)} images for the {len(features)} rows of {path}; "
            "write one name per feature row")
    items = [{"id": name, "path": None, "split": None} for name in names]
    return encode_images(run, ImageStore("features", features=features)), items


def caption_items(run: RunModel, source: str, splits: dict[str, RetrievalSplit]
                  ) -> tuple[np.ndarray, Items, list[RetrievalSplit]]:
    """Embed the captions of ``source`` (a UTF-8 text file with one caption a line, a split
    name or ``all``).

    Returns (embeddings [N, D], one ``{"caption", "image_id", "split"}`` item per row, the
    splits used).
    """
    path = Path(source).expanduser()
    if path.is_file():
        captions = read_nonblank_lines(path, "a caption")
        items = [{"caption": c, "image_id": None, "split": None} for c in captions]
        return encode_texts(run, captions), items, []
    parts = _splits_named(source, splits)
    require(parts is not None, _not_found("--captions", source, "a text file", splits))
    items = [{"caption": split.captions[j],
              "image_id": split.image_ids[split.caption_to_image[j]], "split": split.name}
             for split in parts for j in range(split.n_captions)]
    return np.concatenate([encode_captions(run, split) for split in parts]), items, parts


def held_out_queries(run: RunModel, modality: str, emb: np.ndarray,
                     parts: list[RetrievalSplit], count: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Queries for measuring an approximate index: (queries [Q, D], self ids or None, what
    they are).

    From splits, a random sample of the other modality's items (captions for an image
    index), which are not in the index; otherwise a sample of the indexed rows themselves,
    each left out of its own results.
    """
    if not parts:
        rows = np.sort(rng.choice(len(emb), size=min(count, len(emb)), replace=False))
        return emb[rows], rows, f"{len(rows)} indexed items, each left out of its own results"
    sizes = [split.n_captions if modality == "image" else split.n_images for split in parts]
    picks = np.sort(rng.choice(sum(sizes), size=min(count, sum(sizes)), replace=False))
    bounds = np.cumsum([0, *sizes])
    chunks = []
    for split, low, high in zip(parts, bounds[:-1], bounds[1:], strict=True):
        local = picks[(picks >= low) & (picks < high)] - low
        if len(local):
            chunks.append(encode_captions(run, split, local) if modality == "image"
                          else encode_images(run, split.images, local))
    what = "captions" if modality == "image" else "images"
    names = "+".join(split.name for split in parts)
    return np.concatenate(chunks), None, f"{len(picks)} {what} of {names} (not in the index)"


def build_run_index(run_dir: str | Path, out: str | Path, *, images: str | None = None,
                    captions: str | None = None, spec: IndexSpec | None = None,
                    checkpoint: str = "best", recall_queries: int = 500, seed: int = 0,
                    progress: bool = True, overwrite: bool = False) -> SearchIndex:
    """Embed ``images`` (→ an image index) or ``captions`` (→ a caption index) with a run's
    model, build a FAISS index of kind ``spec.kind`` and save it to the folder ``out``.

    For an approximate kind, recall@10 against exact search on ``recall_queries`` held-out
    queries (:func:`held_out_queries`, sampled with ``seed``) is stored in the metadata.
    """
    spec = spec or IndexSpec()
    require((images is None) != (captions is None),
            "pass exactly one of --images (an image index, for text queries) and --captions "
            "(a caption index, for image queries)")
    spec.validate()
    require(recall_queries >= 1, f"--recall-queries must be at least 1, got {recall_queries}")
    run_dir, out = Path(run_dir), Path(out)
    check_out_folder(out, overwrite)
    config = load_run_config(run_dir)
    splits = load_splits(config.data)
    run = _run_model(run_dir, config, next(iter(splits.values())), checkpoint, progress)
    modality = "image" if images is not None else "caption"
    if images is not None:
        emb, items, parts = image_items(run, images, splits)
    else:
        emb, items, parts = caption_items(run, captions, splits)
    index = build_faiss_index(emb, spec, seed)
    recall, queries_from = None, None
    if spec.kind != "flat":
        rng = np.random.default_rng(seed)
        queries, self_ids, queries_from = held_out_queries(run, modality, emb, parts,
                                                           recall_queries, rng)
        recall = approx_recall(index, emb, queries, RECALL_K, self_ids)
    meta = {
        "modality": modality, "source": images if images is not None else captions,
        **spec_meta(spec, index), "metric": "inner_product",
        "recall_at_10": recall, "recall_queries": queries_from,
        "run_dir": str(run_dir.resolve()), "checkpoint": checkpoint,
        "data_format": config.data.get("format"), "model_context": run.context_meta(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "vsekit": __version__,
    }
    result = SearchIndex(index, items, meta)
    result.save(out, overwrite=overwrite)
    return result


def load_index_run(meta: dict[str, Any], run_dir: str | Path | None = None,
                   progress: bool = False) -> RunModel:
    """The model of the run an index was built with (or of ``run_dir`` instead)."""
    try:
        context = ModelContext(**meta["model_context"])
        recorded, checkpoint = meta["run_dir"], meta["checkpoint"]
    except (KeyError, TypeError):
        raise VsekitError("the index's meta.json lacks its run_dir, checkpoint or "
                          "model_context; rebuild the index") from None
    run_dir = Path(run_dir if run_dir is not None else recorded)
    config = load_run_config(run_dir)
    return _run_model(run_dir, config, shaped_split(context, [""]), checkpoint, progress)


def image_query(run: RunModel, query: str) -> np.ndarray:
    """Embedding [1, D] of an image file, or of the image with id ``query`` in the run's
    dataset (its split's own image data)."""
    path = Path(query).expanduser()
    if path.is_file():
        return encode_images(run, image_file_store(run, [path]))
    splits = load_splits(run.data)
    for split in splits.values():
        if query in split.image_ids:
            return encode_images(run, split.images, [split.image_ids.index(query)])
    example = next(iter(splits.values())).image_ids[0]
    raise VsekitError(f"image query {query!r} is neither an image file nor an image id of the "
                      f"run's dataset (ids look like {example!r}); check the path or the id")


def text_query(run: RunModel, query: str) -> np.ndarray:
    """Embedding [1, D] of a text query."""
    check_query_words(run, query)
    return encode_texts(run, [query])


def search_run_index(index_dir: str | Path, query: str, k: int = 10, *,
                     run_dir: str | Path | None = None, nprobe: int | None = None,
                     ef_search: int | None = None, progress: bool = False) -> dict[str, Any]:
    """The ``k`` best items of an index for ``query`` (text for an image index; an image
    path or image id for a caption index).

    Returns ``{"index", "direction", "query", "k", "count", "kind", "results"}``, results
    ``[{"rank", "score", **item}]`` best first. ``run_dir`` replaces the recorded run (e.g.
    after moving it); ``nprobe`` / ``ef_search`` override the approximate search's settings.
    """
    require(isinstance(k, int) and k >= 1, f"-k must be at least 1, got {k}")
    require(query.strip() != "", "the query is empty; pass some text (or, for a caption "
                                 "index, an image path or image id)")
    index = SearchIndex.load(index_dir)
    set_search_params(index.faiss_index, nprobe=nprobe, ef_search=ef_search)
    run = load_index_run(index.meta, run_dir, progress)
    is_image_index = index.meta.get("modality") == "image"
    emb = text_query(run, query) if is_image_index else image_query(run, query)
    return {"index": str(index_dir), "direction": "text→image" if is_image_index
            else "image→text", "query": query, "k": k, "count": len(index),
            "kind": index.meta.get("kind"), "results": index.search(emb, k)[0]}


def format_results(result: dict[str, Any]) -> str:
    """A readable table of :func:`search_run_index`'s result: rank, score, and the image path
    (else id) or the caption with its image id."""
    images = result["direction"] == "text→image"
    what = "images" if images else "captions"
    lines = [f"{result['direction']}  {result['query']!r}  (top {len(result['results'])} of "
             f"{result['count']} {what}, {result['kind']} index)",
             f"{'rank':>4}  {'score':>7}  " + ("image" if images else "image id / caption")]
    for hit in result["results"]:
        text = (hit.get("path") or hit.get("id") if images
                else f"{hit.get('image_id') or '-'}  {hit.get('caption')}")
        lines.append(f"{hit['rank']:>4}  {hit['score']:>7.4f}  {text}")
    return "\n".join(lines)
