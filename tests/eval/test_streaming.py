"""Streaming ranks and top-k lists vs the in-memory metrics and loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsekit.errors import VsekitError
from vsekit.eval import (
    half_agreement,
    retrieval_metrics,
    retrieval_ranks,
    streaming_metrics,
    streaming_ranks,
    top_k_lists,
)
from vsekit.eval.streaming import check_half

TILES = [(1, 1), (2, 3), (7, 5), (None, None), (1000, 1000)]


def integer_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small-integer embeddings (exact dot products, many ties), unsorted caption map with
    images that have no caption."""
    rng = np.random.default_rng(seed)
    n_images, n_captions, dim = (int(v) for v in rng.integers(1, [25, 90, 5]))
    images = rng.integers(-2, 3, (n_images, dim)).astype(np.float32)
    texts = rng.integers(-2, 3, (n_captions, dim)).astype(np.float32)
    return images, texts, rng.integers(0, n_images, n_captions)


def loop_top(scores: np.ndarray, k: int) -> list[list[int]]:
    """Per row: candidates by score descending, ties by lower index, first k (plain loops)."""
    out = []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        out.append(order[:k])
    return out


@pytest.mark.parametrize("seed", range(8))
def test_ranks_and_top_k_match_references(seed: int) -> None:
    images, texts, c2i = integer_case(seed)
    sims = images @ texts.T
    want = retrieval_ranks(sims, c2i)
    for rows, cols in TILES:
        got = streaming_ranks(images, texts, c2i, top_k=4, tile_rows=rows, tile_cols=cols)
        assert got.i2t_ranks.tolist() == want[0].tolist()
        assert got.t2i_ranks.tolist() == want[1].tolist()
        assert got.i2t_top.tolist() == loop_top(sims, 4)
        assert got.t2i_top.tolist() == loop_top(sims.T, 4)
        i2t_top, t2i_top = top_k_lists(sims, 3, 5, tile_rows=rows, tile_cols=cols)
        assert i2t_top.tolist() == loop_top(sims, 3)
        assert t2i_top.tolist() == loop_top(sims.T, 5)


def test_top_k_handles_signed_zeros_and_extremes() -> None:
    sims = np.array([[0.0, -0.0, -1e30, 3.0, -0.0, 1e-40, -np.inf, 0.0]], dtype=np.float32)
    want = loop_top(sims, 8)
    assert top_k_lists(sims, 8, 1)[0].tolist() == want
    half = np.array([[0.5, -0.0, 0.25, 0.0, 0.5, -1.0]], dtype=np.float16)
    assert top_k_lists(torch.from_numpy(half), 6, 1)[0].tolist() == \
        loop_top(half.astype(np.float32), 6)


def test_streaming_metrics_equal_in_memory_metrics() -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(-3, 4, (300, 8), generator=gen).float() / 8
    c2i = torch.arange(1500) // 5
    texts = images[c2i] + torch.randint(-3, 4, (1500, 8), generator=gen) / 8
    assert streaming_metrics(images, texts, c2i, progress=True) == \
        retrieval_metrics(images @ texts.T, c2i)


def test_float_embeddings_match_the_whole_matmul() -> None:
    """Real-valued embeddings: the tiles round like the whole matmul here (see the module
    docstring), so the ranks agree exactly on this machine's BLAS."""
    gen = torch.Generator().manual_seed(2)
    images = torch.nn.functional.normalize(torch.randn(700, 32, generator=gen), dim=1)
    c2i = torch.arange(3500) // 5
    texts = torch.nn.functional.normalize(images[c2i] + torch.randn(3500, 32, generator=gen),
                                          dim=1)
    want = retrieval_ranks(images @ texts.T, c2i)
    got = streaming_ranks(images, texts, c2i)
    assert np.array_equal(got.i2t_ranks, want[0]) and np.array_equal(got.t2i_ranks, want[1])


def test_torch_threads_are_restored() -> None:
    before = torch.get_num_threads()
    images, texts, c2i = integer_case(0)
    streaming_ranks(images, texts, c2i)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("images", "texts", "c2i", "pattern"), [
    (np.zeros((3, 4)), np.zeros((6, 5)), [0] * 6, "4-d but caption embeddings are 5-d"),
    (np.array([[0.0, np.nan]]), np.zeros((2, 2)), [0, 0], "image_emb row 0 has NaN"),
    (np.zeros((2, 2)), np.array([[0.0, 1.0], [np.inf, 0.0]]), [0, 1], "text_emb row 1"),
    (np.zeros((2, 2)), np.zeros((2, 2)), [0, 2], "outside the image range"),
    (np.zeros((2, 2)), np.zeros((3, 2)), [0, 1], "caption_to_image has shape (2,)"),
    (np.zeros(4), np.zeros((3, 2)), [0, 1, 0], "non-empty 2-D"),
    (np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2)), [0, 1], "pass float embeddings"),
])
def test_bad_inputs_are_one_line_errors(images, texts, c2i, pattern) -> None:
    with pytest.raises(VsekitError) as info:
        streaming_ranks(images, texts, np.array(c2i))
    assert pattern in str(info.value) and "\n" not in str(info.value)


def test_nan_scores_and_bad_options() -> None:
    with pytest.raises(VsekitError, match="contain NaN"):
        top_k_lists(np.array([[0.0, np.nan]]), 1, 1)
    with pytest.raises(VsekitError, match="tile sizes"):
        streaming_ranks(np.zeros((2, 2)), np.zeros((2, 2)), [0, 1], tile_rows=0)
    with pytest.raises(VsekitError, match="top_k"):
        streaming_ranks(np.zeros((2, 2)), np.zeros((2, 2)), [0, 1], top_k=-1)


def loop_agreement(images: torch.Tensor, texts: torch.Tensor, c2i: np.ndarray
                   ) -> tuple[float, float]:
    """(% same rank, % same R@1/5/10 outcome) over all queries, float32 vs bfloat16 scores."""
    def ranks(sims: np.ndarray) -> list[int]:
        out = []
        for i in range(sims.shape[0]):
            mine = [j for j in range(len(c2i)) if c2i[j] == i]
            best = max(sims[i, j] for j in mine)
            out.append(sum(1 for j in range(sims.shape[1]) if sims[i, j] > best))
        for j in range(sims.shape[1]):
            out.append(sum(1 for i in range(sims.shape[0]) if sims[i, j] > sims[c2i[j], j]))
        return out

    full = ranks((images @ texts.T).numpy())
    rounded = ranks((images.bfloat16() @ texts.bfloat16().T).float().numpy())
    same = [a == b for a, b in zip(full, rounded, strict=True)]
    hits = [all((a < k) == (b < k) for k in (1, 5, 10)) for a, b in zip(full, rounded,
                                                                         strict=True)]
    return 100 * float(np.mean(same)), 100 * float(np.mean(hits))


def test_half_agreement_matches_loop_on_all_queries() -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen), dim=1)
    c2i = np.arange(120) // 3
    texts = torch.nn.functional.normalize(images[c2i] + 0.9 * torch.randn(120, 16, generator=gen),
                                          dim=1)
    found = half_agreement(images, texts, c2i, sample=1000)  # sample ≥ queries: all of them
    same, hits = loop_agreement(images, texts, c2i)
    assert found["half_sample_queries"] == 160
    assert found["half_rank_agreement"] == pytest.approx(same)
    assert found["half_recall_agreement"] == pytest.approx(hits)


def test_half_check_refuses_rounding_that_changes_recall() -> None:
    # Each image's GT caption scores 1 - 2^-10, a distractor 1: bfloat16 rounds both to 1 and
    # the tie goes to the GT, so every image query turns from a miss at R@1 into a hit.
    images = torch.eye(20)
    texts = torch.cat([images * (1 - 2 ** -10), images])
    c2i = np.concatenate([np.arange(20), (np.arange(20) + 1) % 20])
    with pytest.raises(VsekitError, match="evaluate without --half"):
        check_half(images, texts, c2i)
    exact = integer_case(5)  # small integers: bfloat16 scores are exact
    found = check_half(*exact)
    assert found["half_recall_agreement"] == 100.0 and found["half_rank_agreement"] == 100.0
    assert streaming_metrics(*exact, half=True) == {**retrieval_metrics(exact[0] @ exact[1].T,
                                                                        exact[2]), **found}
