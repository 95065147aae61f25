"""The embeddings cache: reused while checkpoint and split are unchanged, rebuilt otherwise."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.eval.cache import cached_embeddings, file_digest, split_digest


def make_split(captions: list[str]) -> RetrievalSplit:
    return RetrievalSplit(name="test", images=ImageStore("features", features=np.zeros((2, 1))),
                          captions=captions, caption_to_image=[0, 1], image_ids=["a", "b"])


def test_cache_hits_misses_and_damage(tmp_path: Path) -> None:
    calls = []

    def encode() -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return torch.full((2, 3), float(len(calls))), torch.ones(4, 3, dtype=torch.float64)

    images, texts, hit = cached_embeddings(tmp_path / "emb", "test-best", "k1", encode)
    assert not hit and len(calls) == 1 and images.dtype == texts.dtype == np.float32
    again, _, hit = cached_embeddings(tmp_path / "emb", "test-best", "k1", encode)
    assert hit and len(calls) == 1 and np.array_equal(again, images)
    changed, _, hit = cached_embeddings(tmp_path / "emb", "test-best", "k2", encode)
    assert not hit and len(calls) == 2 and changed[0, 0] == 2.0  # new key: encoded again
    (tmp_path / "emb" / "test-best.npz").write_bytes(b"not a zip")
    _, _, hit = cached_embeddings(tmp_path / "emb", "test-best", "k2", encode)
    assert not hit and len(calls) == 3  # damaged: rebuilt
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == ["test-best.npz"]


def test_digests(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    path.write_bytes(b"weights")
    assert file_digest(path) == hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "best.pt.sha256").write_text("abc\n")
    assert file_digest(path) == "abc"
    base = split_digest(make_split(["x", "y"]))
    assert base == split_digest(make_split(["x", "y"]))
    assert base != split_digest(make_split(["x", "z"]))
