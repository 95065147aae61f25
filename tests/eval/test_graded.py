"""Graded-relevance metrics (Kendall τ-b, nDCG@K) vs slow pair/rank loop references written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vsekit.errors import VsekitError
from vsekit.eval import graded
from vsekit.eval.graded import graded_metrics, kendall_tau_b, ndcg_at_k, pseudo_relevance

# ---------------------------------------------------------------- slow references


def loop_tau_b(x: list[float], y: list[float]) -> float:
    """τ-b = (C − D) / sqrt((C + D + T_x)(C + D + T_y)), T_* = pairs tied in that one only."""
    concordant = discordant = only_x = only_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                only_x += 1
            elif dy == 0:
                only_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + only_x)
                            * (concordant + discordant + only_y))
    return (concordant - discordant) / denominator if denominator > 0 else math.nan


def loop_ndcg(scores: list[float], relevance: list[float], k: int) -> float:
    """nDCG@k, linear gains max(rel, 0), ranks by (-score, index), discount 1/log2(rank + 2)."""
    gains = [max(r, 0.0) for r in relevance]
    ranked = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    dcg = sum(gains[j] / math.log2(rank + 2) for rank, j in enumerate(ranked[:k]))
    ideal = sorted(gains, reverse=True)
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal[:k]))
    return dcg / idcg if idcg > 0 else math.nan


def loop_pseudo(emb: np.ndarray, caption_to_image: list[int]) -> np.ndarray:
    n_images = max(caption_to_image) + 1
    out = np.zeros((n_images, len(caption_to_image)))
    for i in range(n_images):
        own = [c for c, img in enumerate(caption_to_image) if img == i]
        for j in range(len(caption_to_image)):
            if caption_to_image[j] == i:
                out[i, j] = 1.0
            else:
                out[i, j] = max(float(np.dot(emb[c], emb[j])) for c in own)
    return out


def rows_of(fn, scores: np.ndarray, relevance: np.ndarray, *args) -> np.ndarray:
    return np.array([fn(list(s), list(r), *args) for s, r in zip(scores, relevance, strict=True)])


def tied_inputs(seed: int, q: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and relevance with many ties in both (few distinct values)."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (q, n)) / 3.0 + (rng.random((q, n)) < 0.5) * rng.random((q, n))
    relevance = rng.integers(0, 5, (q, n)) / 4.0
    return scores, relevance


def assert_nan_close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual[~np.isnan(actual)], expected[~np.isnan(expected)],
                               rtol=0, atol=1e-12)


# ---------------------------------------------------------------- Kendall τ-b


@pytest.mark.parametrize(("seed", "n"), [(0, 1), (1, 2), (2, 3), (3, 17), (4, 64), (5, 100)])
def test_kendall_tau_b_matches_pair_loop_with_ties(seed: int, n: int) -> None:
    scores, relevance = tied_inputs(seed, 12, n)
    relevance[0] = 0.5  # constant relevance row → NaN
    scores[1] = -2.0  # constant score row → NaN
    expected = rows_of(loop_tau_b, relevance, scores)
    assert np.isnan(expected[:2]).all()
    assert_nan_close(kendall_tau_b(scores, relevance), expected)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.lists(st.lists(st.integers(-3, 3), min_size=n, max_size=n), min_size=1, max_size=4),
    st.lists(st.lists(st.integers(0, 2), min_size=n, max_size=n), min_size=1, max_size=4))))
def test_kendall_tau_b_property_against_loop(data: tuple[list, list]) -> None:
    scores, relevance = data
    rows = min(len(scores), len(relevance))
    scores, relevance = np.array(scores[:rows], float), np.array(relevance[:rows], float)
    assert_nan_close(kendall_tau_b(scores, relevance), rows_of(loop_tau_b, relevance, scores))


def test_kendall_tau_b_perfect_and_reversed_rankings() -> None:
    rng = np.random.default_rng(7)
    relevance = rng.integers(0, 6, (5, 30)) / 5.0
    np.testing.assert_allclose(kendall_tau_b(2 * relevance + 1, relevance), 1.0)
    np.testing.assert_allclose(kendall_tau_b(-relevance, relevance), -1.0)
    strict = rng.permutation(30)[None].astype(float)
    np.testing.assert_allclose(kendall_tau_b(strict, strict), 1.0)
    np.testing.assert_allclose(kendall_tau_b(-strict, strict), -1.0)


def test_kendall_tau_b_is_invariant_to_candidate_order() -> None:
    scores, relevance = tied_inputs(11, 6, 50)
    perm = np.random.default_rng(3).permutation(50)
    np.testing.assert_allclose(kendall_tau_b(scores[:, perm], relevance[:, perm]),
                               kendall_tau_b(scores, relevance), rtol=0, atol=1e-12)


def test_kendall_tau_b_chunked_torch_float32_equal_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    scores, relevance = tied_inputs(5, 9, 33)
    scores = scores.astype(np.float32)
    expected = kendall_tau_b(scores, relevance)
    monkeypatch.setattr(graded, "CHUNK_ELEMENTS", 70)  # 2 rows per block
    assert_nan_close(kendall_tau_b(torch.from_numpy(scores), torch.from_numpy(relevance)),
                     expected)
    assert_nan_close(expected, rows_of(loop_tau_b, relevance, scores.astype(np.float64)))


def test_inversion_count_matches_loop() -> None:
    rng = np.random.default_rng(2)
    for n in (1, 2, 5, 16, 37):
        ranks = rng.integers(0, n, (4, n))
        expected = [sum(int(r[i] > r[j]) for i in range(n) for j in range(i + 1, n))
                    for r in ranks]
        np.testing.assert_array_equal(graded._inversions(ranks), expected)


# ---------------------------------------------------------------- nDCG@K


@pytest.mark.parametrize(("seed", "n", "k"), [(0, 1, 1), (1, 5, 3), (2, 20, 10), (3, 40, 50),
                                              (4, 64, 1)])
def test_ndcg_matches_loop_with_tied_scores(seed: int, n: int, k: int) -> None:
    scores, relevance = tied_inputs(seed, 10, n)
    relevance[0] = 0.0  # no relevant candidate → NaN
    relevance[1] -= 0.5  # negative gains count as 0
    expected = rows_of(loop_ndcg, scores, relevance, k)
    assert math.isnan(expected[0])
    assert_nan_close(ndcg_at_k(scores, relevance, k), expected)


def test_ndcg_perfect_ranking_is_one_and_ties_break_by_index() -> None:
    relevance = np.array([[0.0, 1.0, 0.5, 0.25]])
    np.testing.assert_allclose(ndcg_at_k(relevance, relevance, 3), 1.0)
    # All scores tied: ranking is column order 0, 1, 2 → gains 0, 1, 0.5 at ranks 0..2.
    dcg = 1.0 / math.log2(3) + 0.5 / 2.0
    idcg = 1.0 + 0.5 / math.log2(3) + 0.25 / 2.0
    np.testing.assert_allclose(ndcg_at_k(np.zeros((1, 4)), relevance, 3), dcg / idcg)


def test_ndcg_is_invariant_to_candidate_order_without_score_ties() -> None:
    rng = np.random.default_rng(4)
    scores, relevance = rng.random((6, 40)), rng.integers(0, 5, (6, 40)) / 4.0
    perm = rng.permutation(40)
    np.testing.assert_allclose(ndcg_at_k(scores[:, perm], relevance[:, perm], 10),
                               ndcg_at_k(scores, relevance, 10), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- both directions


def test_graded_metrics_i2t_uses_rows_and_t2i_uses_columns() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.permutation(12).astype(float), rng.permutation(7).astype(float)
    sims = b[:, None] + a[None, :]  # [7 images, 12 captions]
    truth = a[None, :] - b[:, None]  # rows agree with sims, columns are reversed
    out = graded_metrics(sims, truth, ks=(3, 12))
    assert out["i2t_kendall_tau"] == pytest.approx(1.0)
    assert out["t2i_kendall_tau"] == pytest.approx(-1.0)
    assert out["i2t_ndcg3"] == pytest.approx(100.0)
    reversed_ndcg = np.nanmean([loop_ndcg(list(sims[:, j]), list(truth[:, j]), 3)
                                for j in range(12)])
    assert out["t2i_ndcg3"] == pytest.approx(100.0 * reversed_ndcg)
    assert out["t2i_ndcg3"] < 100.0


def test_graded_metrics_equal_loop_means_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    sims, truth = tied_inputs(9, 11, 23)
    truth[2] = 0.0  # NaN τ and nDCG for image 2, skipped by the means
    monkeypatch.setattr(graded, "CHUNK_ELEMENTS", 50)
    out = graded_metrics(torch.from_numpy(sims).float(), truth, ks=(5, 50), prefix="pseudo_")
    sims32 = sims.astype(np.float32).astype(np.float64)
    for direction, s, r in (("i2t", sims32, truth), ("t2i", sims32.T, truth.T)):
        assert out[f"pseudo_{direction}_kendall_tau"] == pytest.approx(
            np.nanmean(rows_of(loop_tau_b, r, s)), abs=1e-12)
        for k in (5, 50):
            assert out[f"pseudo_{direction}_ndcg{k}"] == pytest.approx(
                100.0 * np.nanmean(rows_of(loop_ndcg, s, r, k)), abs=1e-10)
    assert sorted(out) == sorted(f"pseudo_{d}_{m}" for d in ("i2t", "t2i")
                                 for m in ("kendall_tau", "ndcg5", "ndcg50"))


def test_graded_metrics_direction_without_defined_query_is_nan() -> None:
    truth = np.tile(np.array([[0.0, 0.5, 1.0]]), (4, 1))  # every column constant
    out = graded_metrics(np.random.default_rng(0).random((4, 3)), truth, ks=(2,))
    assert math.isnan(out["t2i_kendall_tau"])
    assert not math.isnan(out["t2i_ndcg2"])  # columns 1, 2 have positive gains
    assert not math.isnan(out["i2t_kendall_tau"])


# ---------------------------------------------------------------- pseudo relevance


def test_pseudo_relevance_matches_loop() -> None:
    rng = np.random.default_rng(6)
    caption_to_image = [0, 2, 1, 0, 2, 2, 1, 3]
    emb = rng.standard_normal((8, 5))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out = pseudo_relevance(emb.astype(np.float32), np.array(caption_to_image))
    assert out.shape == (4, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, loop_pseudo(emb, caption_to_image), atol=1e-6)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["shape_mismatch", "one_d", "empty", "nan", "inf"])
def test_bad_matrices_are_one_line_errors(case: str) -> None:
    scores, relevance = np.zeros((3, 4)), np.ones((3, 4))
    if case == "shape_mismatch":
        relevance = np.ones((4, 3))
    elif case == "one_d":
        scores, relevance = np.zeros(4), np.ones(4)
    elif case == "empty":
        scores, relevance = np.zeros((0, 4)), np.ones((0, 4))
    elif case == "nan":
        scores[1, 2] = np.nan
    else:
        relevance[0, 0] = np.inf
    for call in (lambda: kendall_tau_b(scores, relevance),
                 lambda: ndcg_at_k(scores, relevance, 2),
                 lambda: graded_metrics(scores, relevance)):
        with pytest.raises(VsekitError) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("ks", [(0,), (), (10, -1), (2.5,)])
def test_bad_cutoffs_are_errors(ks: tuple) -> None:
    with pytest.raises(VsekitError, match="ks must be positive integers"):
        graded_metrics(np.zeros((2, 3)), np.ones((2, 3)), ks=ks)


def test_pseudo_relevance_bad_inputs_are_errors() -> None:
    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(VsekitError):
        pseudo_relevance(emb, np.zeros((3, 1), dtype=np.int64))
    with pytest.raises(VsekitError):
        pseudo_relevance(emb, np.array([0, 1]))  # one index short
    with pytest.raises(VsekitError):
        pseudo_relevance(2 * emb, np.array([0, 1, 1]))  # not normalised
