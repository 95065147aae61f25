"""The retrieval gallery: top-k with marks against a loop, pictures, the picture-only pool."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vsekit.data import load_splits
from vsekit.data.synthetic import SyntheticParams, generate_split
from vsekit.errors import VsekitError
from vsekit.report.gallery import (
    gallery_html,
    image_files,
    picture_source,
    rank_queries,
    with_pictures_only,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_queries_match_a_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (7, 11), generator=gen).float()  # many ties
    truth = torch.rand(7, 11, generator=gen) < 0.2
    truth[torch.arange(7), torch.randint(0, 11, (7,), generator=gen)] = True
    relevance = (torch.rand(7, 11, generator=gen) < 0.3) | truth
    k = 4
    ranked = rank_queries(scores, truth, relevance, k)
    for q in range(7):
        row = scores[q].tolist()
        order = sorted(range(11), key=lambda j: (-row[j], j))[:k]
        assert ranked.index[q].tolist() == order
        assert ranked.score[q].tolist() == [row[j] for j in order]
        assert ranked.truth[q].tolist() == [bool(truth[q, j]) for j in order]
        assert ranked.relevant[q].tolist() == [bool(relevance[q, j] and not truth[q, j])
                                               for j in order]
        best = max(row[j] for j in range(11) if truth[q, j])
        assert ranked.truth_rank[q] == 1 + sum(v > best for v in row)
    unknown = rank_queries(scores, truth, None, 20)
    assert unknown.index.shape == (7, 11) and not unknown.relevant.any()


def test_gallery_marks_ground_truth_and_true_matches() -> None:
    split = generate_split(SyntheticParams(n_train=1, n_dev=1, n_test=6), "test").split
    gen = torch.Generator().manual_seed(0)
    image_emb = torch.nn.functional.normalize(torch.randn(split.n_images, 8, generator=gen), dim=1)
    text_emb = torch.nn.functional.normalize(torch.randn(split.n_captions, 8, generator=gen),
                                             dim=1)
    k = 3
    html = gallery_html(split, image_emb, text_emb, picture_source(split, []), k=k,
                        n_queries=1000)  # every caption and every image is a query
    assert html.count('<div class="hit ') == (split.n_captions + split.n_images) * k
    assert html.count("<img ") == split.n_captions * k + split.n_images
    assert "dashed orange" in html  # the legend: this split knows complete relevance
    sims = (image_emb @ text_emb.T).tolist()
    expected_truth = expected_relevant = 0
    for j in range(split.n_captions):  # text → image
        top = sorted(range(split.n_images), key=lambda i: (-sims[i][j], i))[:k]
        truth = split.caption_to_image[j]
        expected_truth += truth in top
        expected_relevant += sum(bool(split.relevance[i, j]) and i != truth for i in top)
    for i in range(split.n_images):  # image → text
        top = sorted(range(split.n_captions), key=lambda j: (-sims[i][j], j))[:k]
        expected_truth += sum(split.caption_to_image[j] == i for j in top)
        expected_relevant += sum(bool(split.relevance[i, j]) and split.caption_to_image[j] != i
                                 for j in top)
    assert html.count("✓ ground truth</span>") == expected_truth
    assert html.count("counted wrong</span>") == expected_relevant > 0
    with pytest.raises(VsekitError, match="at least one query"):
        gallery_html(split, image_emb, text_emb, picture_source(split, []), k=0)


def test_picture_only_pool() -> None:
    split = generate_split(SyntheticParams(n_train=1, n_dev=1, n_test=5), "test").split
    files = [Path("a.jpg"), None, Path("c.jpg"), None, None]
    sub, rows, captions = with_pictures_only(split, files)
    assert rows.tolist() == [0, 2] and sub.n_images == 2
    assert [split.captions[j] for j in captions] == sub.captions
    assert with_pictures_only(split, [Path("x")] * 5) is None
    assert with_pictures_only(split, [None] * 5) is None


@pytest.mark.realdata
def test_flickr8k_features_find_the_jpeg_sample(flickr8k_dir: Path) -> None:
    data = {"format": "flickr8k", "root": str(flickr8k_dir), "splits": ["test"]}
    test = load_splits(data)["test"]
    files = image_files(test, data)
    found = [f for f in files if f is not None]
    assert len(found) == 100 and all(f.is_file() for f in found)
    thumb = picture_source(test, files)(files.index(found[0]))
    assert thumb is not None and thumb[1] == "image/jpeg" and thumb[0][:2] == b"\xff\xd8"
