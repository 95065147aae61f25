"""On-disk cache of a split's embeddings, keyed by the checkpoint and the split's contents.

``RUN_DIR/embeddings/<split>-<checkpoint>.npz`` holds ``image_emb`` [N_img, D] and
``text_emb`` [N_cap, D] (float32) and ``key``: the checkpoint's SHA-256 (from its ``.sha256``
file when there is one) and a digest of the split (sizes, image ids, captions, pairs). A new
checkpoint or changed data gives another key, and the embeddings are encoded again.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vsekit.data.dataset import RetrievalSplit

EMBEDDINGS = "embeddings"


def file_digest(path: Path) -> str:
    """SHA-256 hex of a file: its ``NAME.sha256`` sidecar when present, else computed."""
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8").strip()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def split_digest(split: RetrievalSplit) -> str:
    """SHA-256 hex of what a split's embeddings depend on besides the model."""
    digest = hashlib.sha256()
    digest.update(f"{split.name}\n{split.n_images}\n{split.n_captions}\n".encode())
    digest.update("\n".join(map(str, split.image_ids)).encode())
    digest.update("\n".join(split.captions).encode())
    digest.update(np.ascontiguousarray(split.caption_to_image, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _read(path: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached pair if ``path`` holds one under ``key`` (a damaged file counts as absent)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return data["image_emb"], data["text_emb"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def cached_embeddings(folder: Path, name: str, key: str,
                      encode: Callable[[], tuple[torch.Tensor, torch.Tensor]]
                      ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(image embeddings, caption embeddings, came from the cache) for ``folder/name.npz``.

    On a miss, ``encode()`` runs and its float32 result is written atomically.
    """
    path = folder / f"{name}.npz"
    if path.is_file() and (found := _read(path, key)) is not None:
        return found[0], found[1], True
    images, texts = (t.detach().to("cpu", torch.float32).numpy() for t in encode())
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial.npz")
    try:
        np.savez(partial, image_emb=images, text_emb=texts, key=np.array(key))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return images, texts, False
