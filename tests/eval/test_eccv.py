"""ECCV Caption / CxC metrics vs the eccv-caption package's own computation, on the real 5K
test ids the package ships."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.errors import VsekitError
from vsekit.eval import eccv_from_rankings, eccv_metrics
from vsekit.eval.eccv import coco_5k_ids, eccv_data, list_lengths

with warnings.catch_warnings():  # the package warns at import when ujson is missing
    warnings.simplefilter("ignore")
    from eccv_caption import _metrics as package


def package_metrics(i2t_ids: np.ndarray, t2i_ids: np.ndarray) -> dict[str, float]:
    """The package's own functions on ranked id lists, keyed and scaled like vsekit's."""
    data = eccv_data()
    image_ids, caption_ids = data.image_ids, data.caption_ids
    ranked = {"i2t": {int(q): [int(v) for v in row] for q, row in zip(image_ids, i2t_ids,
                                                                      strict=True)},
              "t2i": {int(q): [int(v) for v in row] for q, row in zip(caption_ids, t2i_ids,
                                                                      strict=True)}}
    out = {}
    for direction in ("i2t", "t2i"):
        for name in ("eccv", "cxc"):
            positives = getattr(data, f"{name}_{direction}")
            gts = {int(q): positives.items[positives.starts[i]:positives.starts[i + 1]].tolist()
                   for i, q in enumerate(positives.queries)}
            if name == "eccv":
                found = package.compute_eccv_metrics(ranked[direction], gts)
                out[f"eccv_{direction}_map_at_r"] = 100 * found["eccv_map_at_r"]
                out[f"eccv_{direction}_r_precision"] = 100 * found["eccv_rprecision"]
                out[f"eccv_{direction}_r1"] = 100 * found["eccv_r1"]
            else:
                for k in (1, 5, 10):
                    out[f"cxc_{direction}_r{k}"] = 100 * package.compute_r_at_k(
                        ranked[direction], gts, K=k)
    return out


def mixed_lists(n_queries: int, n_items: int, k: int, positives_of, seed: int) -> np.ndarray:
    """Per query k distinct item indices: its positives (where given) shuffled among random
    items, so that the metrics are far from 0 and 100."""
    rng = np.random.default_rng(seed)
    lists = np.empty((n_queries, k), dtype=np.int64)
    for q in range(n_queries):
        pool = list(dict.fromkeys([*positives_of(q)[: rng.integers(0, k)],
                                   *rng.choice(n_items, 3 * k, replace=False).tolist()]))
        lists[q] = rng.permutation(pool[:k])
    return lists


def test_metrics_from_rankings_match_package() -> None:
    data = eccv_data()
    image_ids, caption_ids = data.image_ids, data.caption_ids
    caption_index = {int(c): j for j, c in enumerate(caption_ids)}
    image_index = {int(i): n for n, i in enumerate(image_ids)}
    eccv_i2t = dict(zip(data.eccv_i2t.queries.tolist(),
                        np.split(data.eccv_i2t.items, data.eccv_i2t.starts[1:-1]), strict=True))
    eccv_t2i = dict(zip(data.eccv_t2i.queries.tolist(),
                        np.split(data.eccv_t2i.items, data.eccv_t2i.starts[1:-1]), strict=True))
    k_captions, k_images = list_lengths()
    i2t = mixed_lists(5000, 25000, k_captions, lambda q: [
        caption_index[c] for c in eccv_i2t.get(int(image_ids[q]), []) if c in caption_index], 0)
    t2i = mixed_lists(25000, 5000, k_images, lambda q: [
        image_index[i] for i in eccv_t2i.get(int(caption_ids[q]), [])], 1)
    ours = eccv_from_rankings(i2t, t2i, image_ids, caption_ids)
    theirs = package_metrics(caption_ids[i2t], image_ids[t2i])
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert 5 < ours["eccv_i2t_map_at_r"] < 95 and 5 < ours["eccv_t2i_map_at_r"] < 95
    assert ours["eccv_map_at_r"] == pytest.approx((ours["eccv_i2t_map_at_r"]
                                                   + ours["eccv_t2i_map_at_r"]) / 2)
    assert ours["cxc_rsum"] == pytest.approx(sum(ours[f"cxc_{d}_r{k}"] for d in ("i2t", "t2i")
                                                 for k in (1, 5, 10)))


def distinct_scores(seed: int) -> np.ndarray:
    """A 5,000 × 25,000 float32 matrix whose scores are distinct within every row and every
    column (integers below 2^24, exact): row i is a random permutation of 0..p-1 (p prime >
    25,000) read cyclically from offset 3i mod p, plus p on the original COCO pairs (caption
    j of image j // 5) so that positives rank high."""
    p = 25013
    cycle = np.tile(np.random.default_rng(seed).permutation(p).astype(np.float32), 2)
    sims = np.stack([cycle[3 * i % p:][:25000] for i in range(5000)])
    sims[np.arange(25000) // 5, np.arange(25000)] += p
    return sims


@pytest.mark.slow
def test_eccv_metrics_on_a_5k_matrix_match_package() -> None:
    data = eccv_data()
    sims = distinct_scores(0)
    ours = eccv_metrics(torch.from_numpy(sims), data.image_ids, data.caption_ids)
    k_captions, k_images = list_lengths()
    # Distinct scores: the reference lists are simply the top scores, in order.
    i2t = torch.topk(torch.from_numpy(sims), k_captions, dim=1).indices.numpy()
    t2i = torch.topk(torch.from_numpy(sims.T.copy()), k_images, dim=1).indices.numpy()
    theirs = package_metrics(data.caption_ids[i2t], data.image_ids[t2i])
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert 10 < ours["eccv_i2t_map_at_r"] < 90 and ours["cxc_i2t_r1"] > 99


def coco_split(image_ids: list[str], name: str = "testall", per_image: int = 5) -> RetrievalSplit:
    n = len(image_ids)
    c2i = np.repeat(np.arange(n), per_image)
    return RetrievalSplit(name=name, images=ImageStore("features", features=np.zeros((n, 1))),
                          captions=["c"] * len(c2i), caption_to_image=c2i, image_ids=image_ids)


def test_coco_5k_ids_accepts_file_order_and_placeholders() -> None:
    data = eccv_data()
    assert data.caption_ids.shape == (25000,) and len(set(data.caption_ids.tolist())) == 25000
    real = coco_split([str(i) for i in data.image_ids])
    for split in (real, coco_split([f"testall-{i}" for i in range(5000)])):
        image_ids, caption_ids = coco_5k_ids(split)
        assert np.array_equal(image_ids, data.image_ids)
        assert np.array_equal(caption_ids, data.caption_ids)
    assert all(data.caption_image[int(c)] == int(real.image_ids[j // 5])
               for j, c in enumerate(data.caption_ids[:50]))


@pytest.mark.parametrize(("split", "pattern"), [
    (coco_split([str(i) for i in range(1000)]), "has 1,000 × 5,000"),
    (coco_split(["x"] * 5000), "has id 'x' but the COCO 5K test file has image"),
    (coco_split([f"test-{i}" for i in range(5000)]), "has id 'testall-0'"[:0] + "has id"),
])
def test_coco_5k_ids_errors(split: RetrievalSplit, pattern: str) -> None:
    with pytest.raises(VsekitError) as info:
        coco_5k_ids(split)
    assert pattern in str(info.value) and "\n" not in str(info.value)


def test_unmatched_ids_are_one_line_errors() -> None:
    data = eccv_data()
    sims = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(VsekitError, match="is not among the ids given"):
        eccv_metrics(sims, data.image_ids[:3], data.caption_ids[:4])
    with pytest.raises(VsekitError, match="one COCO id per image"):
        eccv_metrics(sims, data.image_ids[:2], data.caption_ids[:4])
    with pytest.raises(VsekitError, match="repeat an id"):
        eccv_metrics(sims, [1, 1, 2], data.caption_ids[:4])
