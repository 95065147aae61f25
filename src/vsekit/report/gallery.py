"""Retrieval gallery: for sampled test queries (text→image and image→text), the top-k results
with their scores, the ground truth marked, and true matches that binary labels count as wrong
marked differently (where the dataset knows relevance beyond its pairs). Pictures are shown
where the data has them: the built-in dataset's pixels, image files, or the JPEG sample of the
Flickr8k pack."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vsekit.data import RetrievalSplit, load_splits
from vsekit.data.formats.flickr8k import SAMPLE_DIR
from vsekit.errors import VsekitError, require
from vsekit.eval.encode import encode_split
from vsekit.eval.run import load_run_model
from vsekit.report.html import esc, img
from vsekit.train.run_dir import BEST, CHECKPOINTS, load_run_config

THUMB = 128  # px, longest side of a picture in the gallery

# --------------------------------------------------------------------------- ranking


@dataclass
class Ranked:
    """Top-k candidates of each query (rows of a query × candidate score matrix).

    Attributes:
        index: int64 [Q, k] candidate columns, best first; score: float [Q, k].
        truth: bool [Q, k], the candidate is a ground-truth pair under the binary labels.
        relevant: bool [Q, k], the candidate truly matches but is no ground-truth pair (False
            everywhere when relevance is unknown).
        truth_rank: int64 [Q], 1-based rank of the best ground truth: 1 + the number of
            candidates scoring strictly higher (ties count for the ground truth, as in
            :mod:`vsekit.eval.metrics`).
    """

    index: np.ndarray
    score: np.ndarray
    truth: np.ndarray
    relevant: np.ndarray
    truth_rank: np.ndarray


def rank_queries(scores: torch.Tensor, truth: torch.Tensor, relevance: torch.Tensor | None,
                 k: int) -> Ranked:
    """Top-``k`` of every row of ``scores`` [Q, N] with the marks of :class:`Ranked`.

    ``truth`` bool [Q, N] (each row with at least one True); ``relevance`` bool [Q, N] or None.
    Ties in the top-k are ordered by column index.
    """
    k = min(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    best_truth = scores.masked_fill(~truth, float("-inf")).amax(dim=1, keepdim=True)
    truth_rank = (scores > best_truth).sum(dim=1) + 1
    top_truth = truth.gather(1, order)
    top_relevant = (relevance.gather(1, order) & ~top_truth if relevance is not None
                    else torch.zeros_like(top_truth))
    return Ranked(order.numpy(), scores.gather(1, order).numpy(), top_truth.numpy(),
                  top_relevant.numpy(), truth_rank.numpy())


# --------------------------------------------------------------------------- pictures

Picture = Callable[[int], tuple[bytes, str] | None]  # image row → (encoded bytes, mime)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _pixels_thumb(pixels: np.ndarray) -> tuple[bytes, str]:
    """A small pixel image scaled up by an integer factor (sharp edges kept), as PNG."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    scale = max(1, THUMB // max(image.size))
    return _encode(image.resize((image.width * scale, image.height * scale),
                                Image.Resampling.NEAREST), "PNG"), "image/png"


def _file_thumb(path: Path) -> tuple[bytes, str] | None:
    """The image file shrunk to at most THUMB px, as JPEG; None if missing or unreadable."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            return _encode(image, "JPEG"), "image/jpeg"
    except (OSError, UnidentifiedImageError):
        return None


def image_files(split: RetrievalSplit, data: dict[str, Any]) -> list[Path | None]:
    """The picture file of each image row, or None: the split's own files; for feature-only
    splits, ``image_root/<image id>`` or, for the Flickr8k pack, its JPEG sample folder."""
    if split.images.kind == "files":
        return list(split.images.files)
    folders = [split.image_root] if split.image_root is not None else []
    if data.get("format") == "flickr8k" and data.get("root"):
        folders.append(Path(data["root"]) / SAMPLE_DIR)
    found: list[Path | None] = []
    for image_id in split.image_ids:
        paths = [folder / image_id for folder in folders if (folder / image_id).is_file()]
        found.append(paths[0] if paths else None)
    return found


def picture_source(split: RetrievalSplit, files: list[Path | None]) -> Picture:
    """A function giving each image row's thumbnail (None where the data has no picture):
    the split's pixels, else ``files`` (from :func:`image_files`)."""
    if split.images.kind == "pixels":
        return lambda i: _pixels_thumb(split.images.pixels[i])
    return lambda i: None if files[i] is None else _file_thumb(files[i])


# --------------------------------------------------------------------------- rendering

LEGEND = ('<p class="legend"><span><strong style="color:#0072B2">▣ solid blue: ground truth'
          '</strong> (the pair in the dataset)</span><span><strong style="color:#9a6700">'
          '⬚ dashed orange: true match counted wrong</strong> (relevant, but not the labelled '
          'pair: a false negative of binary R@K)</span></p>')


def _mark(truth: bool, relevant: bool) -> tuple[str, str]:
    if truth:
        return "truth", '<span class="badge">✓ ground truth</span>'
    if relevant:
        return "relevant", '<span class="badge">≈ true match, counted wrong</span>'
    return "", ""


def _picture_html(picture: Picture, row: int, split: RetrievalSplit, role: str) -> str:
    """The thumbnail of image ``row`` (alt text: ``role`` and the image id), or a grey box."""
    thumb = picture(row)
    if thumb is None:
        return f'<div class="noimg">no picture<br>{esc(split.image_ids[row])}</div>'
    return img(thumb[0], thumb[1], f"{role}: image {split.image_ids[row]}")


def _query_html(what: str, hits: list[str], truth_rank: int, k: int) -> str:
    where = f"ground truth at rank {truth_rank}" + (" (not shown)" if truth_rank > k else "")
    return (f'<div class="query"><div class="what">{what}<div class="muted">{where}</div></div>'
            f'<div class="hits">{"".join(hits)}</div></div>')


def _hit_html(body: str, rank: int, score: float, truth: bool, relevant: bool) -> str:
    klass, badge = _mark(truth, relevant)
    return (f'<div class="hit {klass}">{body}<span class="muted">#{rank} · score '
            f'{score:.3f}</span>{badge}</div>')


def gallery_html(split: RetrievalSplit, image_emb: torch.Tensor, text_emb: torch.Tensor,
                 picture: Picture, *, relevance: np.ndarray | None = None, k: int = 5,
                 n_queries: int = 4, seed: int = 0) -> str:
    """The gallery as an HTML fragment.

    ``image_emb`` [N_img, D] and ``text_emb`` [N_cap, D] are the model's embeddings of
    ``split``; ``relevance`` bool [N_img, N_cap] (default ``split.relevance``) marks true
    matches beyond the pairs; ``n_queries`` of each direction are drawn with ``seed``.
    """
    require(k >= 1 and n_queries >= 1, f"the gallery needs at least one query and one result "
                                       f"per query, got {n_queries} queries and top {k}")
    relevance = split.relevance if relevance is None else relevance
    sims = (image_emb @ text_emb.T).float().cpu()
    c2i = torch.from_numpy(split.caption_to_image)
    truth = torch.zeros(sims.shape, dtype=torch.bool)
    truth[c2i, torch.arange(len(c2i))] = True
    rel = None if relevance is None else torch.from_numpy(np.asarray(relevance, dtype=bool))
    rng = np.random.default_rng(seed)
    with_caption = np.unique(split.caption_to_image)
    captions = np.sort(rng.choice(split.n_captions, min(n_queries, split.n_captions),
                                  replace=False))
    images = np.sort(rng.choice(with_caption, min(n_queries, len(with_caption)), replace=False))
    parts = [LEGEND if rel is not None else
             '<p class="muted">This dataset knows only its labelled pairs (marked ✓); other '
             'true matches cannot be marked.</p>']
    parts.append("<h4>text → image</h4>")
    t2i = rank_queries(sims.T[captions], truth.T[captions],
                       None if rel is None else rel.T[captions], k)
    for q, caption in enumerate(captions):
        hits = [_hit_html(_picture_html(picture, int(i), split,
                                        f"result {r + 1}{' (ground truth)' if t else ''}"),
                          r + 1, s, t, v)
                for r, (i, s, t, v) in enumerate(zip(t2i.index[q], t2i.score[q], t2i.truth[q],
                                                     t2i.relevant[q], strict=True))]
        what = f"<strong>“{esc(split.captions[caption])}”</strong>"
        parts.append(_query_html(what, hits, int(t2i.truth_rank[q]), k))
    parts.append("<h4>image → text</h4>")
    i2t = rank_queries(sims[images], truth[images], None if rel is None else rel[images], k)
    for q, image in enumerate(images):
        hits = [_hit_html(f"“{esc(split.captions[j])}”<br>", r + 1, s, t, v)
                for r, (j, s, t, v) in enumerate(zip(i2t.index[q], i2t.score[q], i2t.truth[q],
                                                     i2t.relevant[q], strict=True))]
        parts.append(_query_html(_picture_html(picture, int(image), split, "query"), hits,
                                 int(i2t.truth_rank[q]), k))
    return "\n".join(parts)


# --------------------------------------------------------------------------- run directories


def with_pictures_only(split: RetrievalSplit, picture_files: list[Path | None]
                       ) -> tuple[RetrievalSplit, np.ndarray, np.ndarray] | None:
    """Where only some images have a picture (e.g. Flickr8k's 100-image JPEG sample of the
    1000 test images): (the sub-split of those, their image rows, their caption rows).
    None when all or none have one (the gallery then ranks over the whole split)."""
    rows = np.array([i for i, f in enumerate(picture_files) if f is not None], dtype=np.int64)
    if len(rows) in (0, split.n_images):
        return None
    captions = np.flatnonzero(np.isin(split.caption_to_image, rows))
    return split.subset_images(rows), rows, captions


def run_gallery(run_dir: Path, *, split: str | None = None, checkpoint: str = "best",
                k: int = 5, n_queries: int = 4, seed: int = 0) -> str:
    """The gallery of a run's model on ``split`` (default: the config's eval split), as an
    HTML fragment with a heading line saying what was ranked."""
    config = load_run_config(run_dir)
    splits = load_splits(config.data)
    name = split or config.eval.split
    if name not in splits:
        raise VsekitError(f"the run's dataset has no split {name!r} (found: {', '.join(splits)})")
    data = splits[name]
    if checkpoint == "best" and not (run_dir / CHECKPOINTS / BEST).is_file():
        checkpoint = "last"  # a run stopped before its first dev evaluation
    model = load_run_model(run_dir, config, data, checkpoint)
    device = next(model.parameters()).device
    image_emb, text_emb = encode_split(model, data, batch_size=config.eval.batch_size,
                                       device=device)
    pool = (f"ranked among all {data.n_images} images and {data.n_captions} captions of the "
            f"{name} split")
    files = image_files(data, config.data) if data.images.kind != "pixels" else []
    restricted = with_pictures_only(data, files) if files else None
    if restricted is not None:
        data, rows, captions = restricted
        files = [files[i] for i in rows]
        image_emb, text_emb = image_emb[rows], text_emb[captions]
        pool = (f"ranked among the {data.n_images} {name} images that have a picture (and their "
                f"{data.n_captions} captions), not all {len(files)}: the metrics table uses "
                f"the whole split")
    intro = (f'<p class="muted">{n_queries} sampled queries each way, top {k} results, '
             f'{checkpoint} checkpoint, {esc(pool)}.</p>')
    return intro + gallery_html(data, image_emb.cpu(), text_emb.cpu(),
                                picture_source(data, files), k=k, n_queries=n_queries,
                                seed=seed)
