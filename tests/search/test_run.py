"""Queries are embedded like the run's training data, for each kind of text side: a
transformer (hf), and precomputed MiniLM caption features (the Flickr8k pack), where new
text goes through the same sentence encoder and image files through EfficientNet-Lite0."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.search.conftest import TINY_DATA, make_untrained_run
from tests.search.test_cli import split_embeddings, top_k
from vsekit.errors import VsekitError
from vsekit.search.encode import CAPTION_FEATURE_ENCODERS, sentence_features
from vsekit.search.index import IndexSpec, SearchIndex
from vsekit.search.run import build_run_index, load_index_run, search_run_index


@pytest.mark.slow
def test_hf_text_side(tmp_path: Path) -> None:
    run_dir = make_untrained_run(tmp_path / "hf", {
        "data": TINY_DATA,
        "model": {"embed_dim": 16, "image": {"type": "cnn", "width": 4},
                  "text": {"type": "hf", "model": "minilm", "freeze": True, "max_length": 24}}})
    build_run_index(run_dir, tmp_path / "idx", images="test", progress=False)
    split, image_emb, text_emb = split_embeddings(run_dir)
    result = search_run_index(tmp_path / "idx", split.captions[5], 4)
    scores, ids = top_k(image_emb, text_emb[5], 4)
    assert [hit["id"] for hit in result["results"]] == [split.image_ids[i] for i in ids]
    np.testing.assert_allclose([hit["score"] for hit in result["results"]], scores, atol=1e-4)


def assert_same_scores(hits: list[dict], key: str, keys: list[str], brute: torch.Tensor) -> None:
    """Each hit's score is the brute-force score of its item, and the hits' scores are the
    brute-force top scores (fp16 features make near-ties order freely)."""
    for hit in hits:
        assert hit["score"] == pytest.approx(float(brute[keys.index(hit[key])]), abs=3e-3)
    top = torch.topk(brute, len(hits)).values.numpy()
    np.testing.assert_allclose([hit["score"] for hit in hits], top, atol=3e-3)


@pytest.mark.realdata
@pytest.mark.slow
def test_flickr8k_precomputed_text_side(flickr8k_dir: Path, tmp_path: Path) -> None:
    assert CAPTION_FEATURE_ENCODERS["flickr8k"] == "minilm"
    data = {"format": "flickr8k", "root": str(flickr8k_dir), "splits": ["test"]}
    run_dir = make_untrained_run(tmp_path / "f8k", {
        "data": data, "model": {"embed_dim": 32, "image": {"type": "projection"},
                                "text": {"type": "precomputed"}}})
    build_run_index(run_dir, tmp_path / "images", images="test", progress=False)
    build_run_index(run_dir, tmp_path / "captions", captions="test", progress=False,
                    spec=IndexSpec("hnsw"), recall_queries=50)
    split, image_emb, text_emb = split_embeddings(run_dir)
    # New text gets the pack's MiniLM caption features.
    meta = SearchIndex.load(tmp_path / "captions").meta
    assert meta["model_context"] == {"embed_dim": 32, "image_kind": "features",
                                     "image_feature_dim": 1280, "caption_feature_dim": 384}
    assert meta["recall_at_10"] > 0.9
    assert meta["recall_queries"] == "50 images of test (not in the index)"
    run = load_index_run(meta)
    features = sentence_features(run, split.captions[:3])
    cosine = (features * split.caption_features[:3]).sum(1)
    assert features.shape == (3, 384) and np.all(cosine > 0.999)
    # text → image with a test caption, as free text.
    result = search_run_index(tmp_path / "images", split.captions[10], 10)
    assert_same_scores(result["results"], "id", split.image_ids, image_emb @ text_emb[10])
    # image → text with a sample JPEG of the test split, read from the file.
    name = next(n for n in split.image_ids if (flickr8k_dir / "images_sample" / n).is_file())
    image = split.image_ids.index(name)
    result = search_run_index(tmp_path / "captions", str(flickr8k_dir / "images_sample" / name),
                              10, ef_search=400)
    keys = list(range(split.n_captions))
    hits = [{**hit, "row": split.captions.index(hit["caption"])} for hit in result["results"]]
    assert_same_scores(hits, "row", keys, text_emb @ image_emb[image])
    # A .npy features file with its list of names: the rows' own embeddings.
    rows = [4, 0, 7]
    np.save(tmp_path / "some.npy", split.images.features[rows].astype(np.float16))
    (tmp_path / "some.txt").write_text("".join(f"{split.image_ids[i]}\n" for i in rows))
    index = build_run_index(run_dir, tmp_path / "file", images=str(tmp_path / "some.npy"),
                            progress=False)
    assert [item["id"] for item in index.items] == [split.image_ids[i] for i in rows]
    stored = index.faiss_index.reconstruct_n(0, 3)
    np.testing.assert_allclose(stored, image_emb[rows].numpy(), atol=2e-3)
    np.save(tmp_path / "narrow.npy", np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(VsekitError, match="holds 10-d features but the run was trained on 1280-d"):
        build_run_index(run_dir, tmp_path / "x", images=str(tmp_path / "narrow.npy"))


def test_unknown_caption_features_are_a_clear_error() -> None:
    run = SimpleNamespace(data={"format": "precomp"})  # only its data format is read
    with pytest.raises(VsekitError, match="does not know which sentence encoder made them"):
        sentence_features(run, ["a dog"])
