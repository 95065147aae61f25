"""Protocol folds vs loop references; sizes checked with one-line errors; fold averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.errors import VsekitError
from vsekit.eval import PROTOCOLS, average_metrics, protocol_folds, retrieval_metrics
from vsekit.eval.encode import evaluate_protocol
from vsekit.eval.protocols import image_folds


def loop_folds(caption_to_image: list[int], n_images: int, fold_images: int) -> list[tuple]:
    """Plain loops: consecutive image blocks, their captions in order, local image indices."""
    folds = []
    start = 0
    while start < n_images:
        images = list(range(start, min(start + fold_images, n_images)))
        captions, local = [], []
        for j, i in enumerate(caption_to_image):
            if i in images:
                captions.append(j)
                local.append(images.index(i))
        folds.append((images, captions, local))
        start += fold_images
    return folds


@pytest.mark.parametrize("seed", range(6))
def test_image_folds_match_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_images = int(rng.integers(1, 30))
    c2i = rng.integers(0, n_images, int(rng.integers(1, 80)))  # unsorted; some images bare
    for fold_images in (1, 3, 7, n_images, n_images + 5):
        got = image_folds(c2i, n_images, fold_images)
        want = loop_folds(c2i.tolist(), n_images, fold_images)
        assert len(got) == len(want)
        for fold, (images, captions, local) in zip(got, want, strict=True):
            assert fold.images.tolist() == images
            assert fold.captions.tolist() == captions
            assert fold.caption_to_image.tolist() == local


def standard_map(n_images: int, per_image: int = 5) -> np.ndarray:
    return np.repeat(np.arange(n_images), per_image)


def test_registered_protocols_and_fold_shapes() -> None:
    assert PROTOCOLS.names() == ["any", "coco-1k", "coco-5k", "f30k-1k"]
    coco = standard_map(5000)
    folds = protocol_folds("coco-1k", coco, 5000)
    assert [f.images[[0, -1]].tolist() for f in folds] == [[1000 * k, 1000 * k + 999]
                                                           for k in range(5)]
    assert all(len(f.captions) == 5000 and f.captions[0] == 5000 * k
               for k, f in enumerate(folds))
    assert [len(f.images) for f in protocol_folds("coco-5k", coco, 5000)] == [5000]
    assert [len(f.captions) for f in protocol_folds("f30k-1k", standard_map(1000), 1000)] \
        == [5000]
    whole = protocol_folds("any", np.array([2, 0, 2]), 4)  # image 1 and 3 have no caption
    assert len(whole) == 1 and whole[0].images.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("name", "c2i", "n_images", "pattern"), [
    ("f30k-1k", standard_map(999), 999, "needs 1,000 images with 5 captions each"),
    ("f30k-1k", np.append(standard_map(1000), 3), 1000, "(5–6 per image)"),
    ("coco-1k", standard_map(1000), 1000, "testall"),
    ("coco-5k", standard_map(5000, 4), 5000, "20,000 captions (4 per image)"),
    ("coco-5k", standard_map(5000)[:-1], 5000, "(4–5 per image)"),
    ("coco1k", standard_map(5000), 5000, "did you mean 'coco-1k'"),
])
def test_wrong_sizes_are_one_line_errors(name, c2i, n_images, pattern) -> None:
    with pytest.raises(VsekitError) as info:
        protocol_folds(name, c2i, n_images)
    assert pattern in str(info.value) and "\n" not in str(info.value)


def test_average_metrics() -> None:
    assert average_metrics([{"a": 1.0, "b": 4.0}, {"a": 2.0, "b": 0.0}]) == {"a": 1.5, "b": 2.0}
    with pytest.raises(VsekitError):
        average_metrics([])


def coco_like_split(n_images: int) -> RetrievalSplit:
    c2i = standard_map(n_images)
    return RetrievalSplit(name="testall", images=ImageStore("features",
                                                            features=np.zeros((n_images, 1))),
                          captions=[f"c{j}" for j in range(len(c2i))], caption_to_image=c2i,
                          image_ids=[f"testall-{i}" for i in range(n_images)])


@pytest.mark.parametrize("stream", [False, True])
def test_coco_1k_is_the_mean_over_loop_folds(stream: bool) -> None:
    split = coco_like_split(5000)
    gen = torch.Generator().manual_seed(0)
    # Multiples of 1/4 in [-1, 1]: every dot product is exact, so streamed tiles and the
    # whole matmul agree bit for bit, ties included.
    images = torch.randint(-4, 5, (5000, 6), generator=gen).float() / 4
    texts = images[split.caption_to_image] + torch.randint(-2, 3, (25000, 6), generator=gen) / 4
    result = evaluate_protocol(images, texts, split, "coco-1k", stream=stream)
    assert result.streamed is stream and len(result.folds) == 5
    per_fold = []
    for images_k, captions_k, local in loop_folds(split.caption_to_image.tolist(), 5000, 1000):
        sims = images[images_k] @ texts[captions_k].T
        per_fold.append(retrieval_metrics(sims, local))
    for key, value in result.metrics.items():
        assert value == pytest.approx(np.mean([f[key] for f in per_fold]), abs=1e-9), key
    assert result.folds == per_fold  # exact: the same ranks give the same floats
    whole = evaluate_protocol(images, texts, split, "coco-5k", stream=stream)
    assert whole.metrics == retrieval_metrics(images @ texts.T, split.caption_to_image)


def test_protocol_option_errors() -> None:
    split = coco_like_split(5000)
    images, texts = torch.zeros(5000, 2), torch.zeros(25000, 2)
    with pytest.raises(VsekitError, match="use --protocol coco-5k"):
        evaluate_protocol(images, texts, split, "coco-1k", eccv=True)
    with pytest.raises(VsekitError, match="--half needs streaming"):
        evaluate_protocol(images, texts, split, "coco-5k", stream=False, half=True)
    with pytest.raises(VsekitError, match="pseudo-label metrics need"):
        evaluate_protocol(images, texts, split, "coco-5k", stream=True,
                          pseudo_caption_emb=np.zeros((25000, 3)))


@pytest.mark.slow
def test_coco_5k_with_eccv_held_and_streamed_agree() -> None:
    split = coco_like_split(5000)  # placeholder ids: the 5K test file order is assumed
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(-4, 5, (5000, 6), generator=gen).float() / 4
    texts = images[split.caption_to_image] + torch.randint(-2, 3, (25000, 6), generator=gen) / 4
    held = evaluate_protocol(images, texts, split, "coco-5k", eccv=True, stream=False)
    streamed = evaluate_protocol(images, texts, split, "coco-5k", eccv=True, stream=True)
    assert held.metrics == streamed.metrics  # ranks and top-k lists alike, ties included
    assert {"eccv_map_at_r", "eccv_r_precision", "eccv_r1", "cxc_i2t_r1", "cxc_t2i_r1",
            "eccv_i2t_map_at_r", "eccv_t2i_r_precision", "rsum"} <= set(held.metrics)
    assert 0 < held.metrics["eccv_map_at_r"] < 100 and held.metrics["cxc_rsum"] > 0
