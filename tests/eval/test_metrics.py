"""Chunked retrieval ranks/metrics vs slow per-query loop references written here."""

from __future__ import annotations

import importlib.util
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vsekit.errors import VsekitError
from vsekit.eval import (
    metrics,
    metrics_from_ranks,
    recall_at_k,
    relevance_ranks,
    relevance_recall,
    retrieval_metrics,
    retrieval_ranks,
)

CHUNKS = [1, 3, 7, None, 10_000]


# ---------------------------------------------------------------- slow references


def captions_of(caption_to_image: list[int], n_images: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n_images)]
    for j, i in enumerate(caption_to_image):
        out[i].append(j)
    return out


def loop_ranks_argsort(sims: np.ndarray, caption_to_image: list[int]) -> tuple[list, list]:
    """The classic VSE evaluation: argsort each query descending, position of the GT."""
    n_images, n_captions = sims.shape
    i2t = []
    for i, gts in enumerate(captions_of(caption_to_image, n_images)):
        order = list(np.argsort(sims[i])[::-1])
        i2t.append(min(order.index(j) for j in gts) if gts else -1)
    t2i = []
    for j in range(n_captions):
        order = list(np.argsort(sims[:, j])[::-1])
        t2i.append(order.index(caption_to_image[j]))
    return i2t, t2i


def loop_ranks_strict(sims: np.ndarray, caption_to_image: list[int]) -> tuple[list, list]:
    """Plain loops: number of candidates scoring strictly higher than the GT (min for i2t)."""
    s = sims.tolist()
    n_images, n_captions = len(s), len(s[0])
    i2t = []
    for i, gts in enumerate(captions_of(caption_to_image, n_images)):
        counts = [sum(1 for k in range(n_captions) if s[i][k] > s[i][c]) for c in gts]
        i2t.append(min(counts) if counts else -1)
    t2i = [sum(1 for k in range(n_images) if s[k][j] > s[caption_to_image[j]][j])
           for j in range(n_captions)]
    return i2t, t2i


def loop_relevance_ranks(sims: np.ndarray, relevance: np.ndarray) -> tuple[list, list]:
    """Plain loops: strict-greater count of the best-scoring relevant item, -1 if none."""
    s, rel = sims.tolist(), relevance.tolist()
    n_images, n_captions = len(s), len(s[0])
    i2t = []
    for i in range(n_images):
        scores = [s[i][j] for j in range(n_captions) if rel[i][j]]
        i2t.append(sum(1 for v in s[i] if v > max(scores)) if scores else -1)
    t2i = []
    for j in range(n_captions):
        scores = [s[i][j] for i in range(n_images) if rel[i][j]]
        column = [s[i][j] for i in range(n_images)]
        t2i.append(sum(1 for v in column if v > max(scores)) if scores else -1)
    return i2t, t2i


def loop_metrics(i2t: list[int], t2i: list[int]) -> dict[str, float]:
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        kept = [r for r in ranks if r >= 0]
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(1 for r in kept if r < k) / len(kept)
        out[f"{name}_medr"] = math.floor(statistics.median(kept)) + 1
        out[f"{name}_meanr"] = sum(kept) / len(kept) + 1
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def assert_metrics_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def untied(n_images: int, n_captions: int, seed: int) -> np.ndarray:
    """Random float64 scores with all values distinct (checked)."""
    sims = np.random.default_rng(seed).standard_normal((n_images, n_captions))
    assert np.unique(sims).size == sims.size
    return sims


def variable_map(n_images: int, n_captions: int, seed: int) -> list[int]:
    """Random caption→image map: 0 to many captions per image."""
    return np.random.default_rng(seed).integers(0, n_images, n_captions).tolist()


# ---------------------------------------------------------------- ranks and metrics


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("as_torch", [False, True])
def test_five_captions_per_image_match_classic_loop(chunk_size, as_torch):
    sims = untied(20, 100, seed=1)
    c2i = [j // 5 for j in range(100)]
    want_i2t, want_t2i = loop_ranks_argsort(sims, c2i)
    given_sims = torch.from_numpy(sims) if as_torch else sims
    given_map = torch.tensor(c2i) if as_torch else np.array(c2i)
    i2t, t2i = retrieval_ranks(given_sims, given_map, chunk_size)
    assert i2t.dtype == np.int64 and t2i.dtype == np.int64
    assert i2t.tolist() == want_i2t and t2i.tolist() == want_t2i
    got = retrieval_metrics(given_sims, given_map, chunk_size=chunk_size)
    assert_metrics_close(got, loop_metrics(want_i2t, want_t2i))


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_variable_captions_per_image_match_classic_loop(chunk_size, seed):
    sims = untied(15, 60, seed=seed)
    c2i = variable_map(15, 60, seed)
    want_i2t, want_t2i = loop_ranks_argsort(sims, c2i)
    i2t, t2i = retrieval_ranks(sims, c2i, chunk_size)
    assert i2t.tolist() == want_i2t and t2i.tolist() == want_t2i
    assert_metrics_close(retrieval_metrics(sims, c2i, chunk_size=chunk_size),
                         loop_metrics(want_i2t, want_t2i))


def test_images_without_captions_are_excluded_from_i2t():
    sims = untied(6, 8, seed=3)
    c2i = [0, 0, 2, 2, 2, 5, 5, 0]  # images 1, 3, 4 have no caption
    i2t, t2i = retrieval_ranks(sims, c2i)
    want_i2t, want_t2i = loop_ranks_argsort(sims, c2i)
    assert i2t.tolist() == want_i2t and t2i.tolist() == want_t2i
    assert [i for i, r in enumerate(i2t) if r < 0] == [1, 3, 4]
    assert_metrics_close(retrieval_metrics(sims, c2i), loop_metrics(want_i2t, want_t2i))


def test_single_image_single_caption():
    i2t, t2i = retrieval_ranks(np.array([[0.3]]), [0])
    assert i2t.tolist() == [0] and t2i.tolist() == [0]
    got = retrieval_metrics(np.array([[0.3]]), [0])
    assert got["i2t_r1"] == got["t2i_r1"] == 100.0
    assert got["i2t_medr"] == got["t2i_meanr"] == 1.0 and got["rsum"] == 600.0


def test_all_tied_scores_rank_every_gt_first():
    # every candidate ties with the GT, none is strictly higher, so every rank is 0
    sims = np.ones((3, 4), dtype=np.float32)
    i2t, t2i = retrieval_ranks(sims, [0, 1, 2, 2], chunk_size=2)
    assert i2t.tolist() == [0, 0, 0] and t2i.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_integer_scores_with_ties_match_strict_loop(chunk_size):
    sims = np.random.default_rng(4).integers(0, 4, (12, 40)).astype(np.float32)
    c2i = variable_map(12, 40, 4)
    want_i2t, want_t2i = loop_ranks_strict(sims, c2i)
    i2t, t2i = retrieval_ranks(sims, c2i, chunk_size)
    assert i2t.tolist() == want_i2t and t2i.tolist() == want_t2i
    assert_metrics_close(retrieval_metrics(sims, c2i, chunk_size=chunk_size),
                         loop_metrics(want_i2t, want_t2i))


def test_many_worker_threads_give_the_same_ranks(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 5)  # more workers than cores
    sims = np.random.default_rng(19).integers(0, 6, (23, 70)).astype(np.float32)
    c2i = variable_map(23, 70, 19)
    i2t, t2i = retrieval_ranks(sims, c2i, chunk_size=2)
    assert (i2t.tolist(), t2i.tolist()) == loop_ranks_strict(sims, c2i)


@settings(max_examples=60, deadline=None)
@given(n_images=st.integers(1, 7), n_captions=st.integers(1, 15), levels=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1), chunk_size=st.sampled_from(CHUNKS))
def test_property_ranks_equal_strict_loop(n_images, n_captions, levels, seed, chunk_size):
    rng = np.random.default_rng(seed)
    sims = rng.integers(0, levels, (n_images, n_captions)).astype(np.float64)
    c2i = rng.integers(0, n_images, n_captions).tolist()
    i2t, t2i = retrieval_ranks(sims, c2i, chunk_size)
    assert (i2t.tolist(), t2i.tolist()) == loop_ranks_strict(sims, c2i)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("chunk_size", [1, None])
def test_low_precision_torch_input_matches_strict_loop_on_its_values(dtype, chunk_size):
    sims = torch.randn(16, 50).to(dtype)
    c2i = variable_map(16, 50, 5)
    values = sims.double().numpy()  # the exact values the scores hold
    want_i2t, want_t2i = loop_ranks_strict(values, c2i)
    i2t, t2i = retrieval_ranks(sims, c2i, chunk_size)
    assert i2t.tolist() == want_i2t and t2i.tolist() == want_t2i


def test_float16_numpy_input_matches_strict_loop():
    sims = np.random.default_rng(6).standard_normal((10, 30)).astype(np.float16)
    c2i = [j // 3 for j in range(30)]
    want_i2t, want_t2i = loop_ranks_strict(sims.astype(np.float64), c2i)
    i2t, t2i = retrieval_ranks(sims, c2i, chunk_size=4)
    assert i2t.tolist() == want_i2t and t2i.tolist() == want_t2i


def test_float64_differences_below_float32_resolution_are_kept():
    # 1 + 1e-12 and 1 are equal in float32: comparing in float32 would tie them
    sims = np.array([[1.0, 1.0 + 1e-12], [0.0, 0.0]])
    i2t, t2i = retrieval_ranks(sims, [0, 1])
    assert i2t.tolist() == loop_ranks_strict(sims, [0, 1])[0] == [1, 0]
    assert t2i.tolist() == loop_ranks_strict(sims, [0, 1])[1]


def test_non_contiguous_and_readonly_numpy_inputs(tmp_path):
    sims = untied(9, 27, seed=7)
    c2i = variable_map(9, 27, 7)
    want = loop_ranks_argsort(sims, c2i)
    path = tmp_path / "sims.npy"
    np.save(path, sims)
    readonly = np.load(path, mmap_mode="r")
    fortran = np.asfortranarray(sims)
    flipped = np.ascontiguousarray(sims[:, ::-1])[:, ::-1]  # negative column stride
    for given_sims in (readonly, fortran, flipped):
        i2t, t2i = retrieval_ranks(given_sims, c2i, chunk_size=2)
        assert (i2t.tolist(), t2i.tolist()) == want


def test_transposed_torch_view_and_grad_tensor():
    base = torch.from_numpy(untied(30, 8, seed=8))
    sims = base.T.requires_grad_()  # [8, 30], not contiguous, tracks gradients
    c2i = variable_map(8, 30, 8)
    i2t, t2i = retrieval_ranks(sims, c2i, chunk_size=3)
    assert (i2t.tolist(), t2i.tolist()) == loop_ranks_argsort(base.T.numpy(), c2i)


def test_metrics_from_ranks_matches_loop_and_excludes_negative_ranks():
    rng = np.random.default_rng(9)
    i2t = rng.integers(-1, 30, 57)
    t2i = rng.integers(0, 40, 101)
    got = metrics_from_ranks(torch.from_numpy(i2t), t2i)
    assert_metrics_close(got, loop_metrics(i2t.tolist(), t2i.tolist()))


def test_medr_floors_an_even_median():
    # 0-based ranks 0, 1, 2, 3: median 1.5 → floor 1 → medr 2; meanr 1.5 + 1
    got = metrics_from_ranks([0, 1, 2, 3], [5])
    assert got["i2t_medr"] == 2.0 and got["i2t_meanr"] == 2.5 and got["t2i_medr"] == 6.0


def test_recall_at_k_custom_cutoffs():
    ranks = [0, 4, 4, 9, 20, -1]
    assert recall_at_k(ranks, (1, 5, 21)) == pytest.approx([20.0, 60.0, 100.0])


@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_accelerator_kernel_matches_strict_loop(monkeypatch, chunk_size):
    # the torch kernel (used for GPU tensors) run on CPU in place of the numpy one
    def torch_kernel(scores, row_thresholds, col_thresholds, step):
        return metrics._count_greater_torch(scores, torch.from_numpy(row_thresholds),
                                            torch.from_numpy(col_thresholds), step)

    monkeypatch.setattr(metrics, "_count_greater_numpy", torch_kernel)
    rng = np.random.default_rng(18)
    sims = rng.integers(0, 5, (11, 33)).astype(np.float32)
    c2i = variable_map(11, 33, 18)
    i2t, t2i = retrieval_ranks(torch.from_numpy(sims).half(), c2i, chunk_size)
    assert (i2t.tolist(), t2i.tolist()) == loop_ranks_strict(sims, c2i)
    relevance = rng.random((11, 33)) < 0.1
    i2t, t2i = relevance_ranks(sims, relevance, chunk_size)
    assert (i2t.tolist(), t2i.tolist()) == loop_relevance_ranks(sims, relevance)
    sims[5, 2] = np.nan
    with pytest.raises(VsekitError, match=r"NaN at \[5, 2\]"):
        retrieval_ranks(sims, c2i, chunk_size)


# ---------------------------------------------------------------- complete relevance


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("as_torch", [False, True])
def test_relevance_ranks_match_loop(chunk_size, as_torch):
    rng = np.random.default_rng(10)
    sims = rng.integers(0, 6, (14, 45)).astype(np.float32)  # ties included
    relevance = rng.random((14, 45)) < 0.08
    relevance[3] = False  # an image with no relevant caption
    relevance[:, 7] = False  # a caption with no relevant image
    inputs = (torch.from_numpy(sims), torch.from_numpy(relevance)) if as_torch \
        else (sims, relevance)
    i2t, t2i = relevance_ranks(*inputs, chunk_size)
    want_i2t, want_t2i = loop_relevance_ranks(sims, relevance)
    assert i2t.tolist() == want_i2t and t2i.tolist() == want_t2i
    assert i2t[3] == -1 and t2i[7] == -1


@pytest.mark.parametrize("ks", [(1, 5, 10), (2, 3)])
def test_relevance_recall_matches_loop(ks):
    rng = np.random.default_rng(11)
    sims = rng.standard_normal((12, 36))
    relevance = rng.random((12, 36)) < 0.1
    relevance[np.arange(36) // 3, np.arange(36)] = True  # the paired GT is always relevant
    want_i2t, want_t2i = loop_relevance_ranks(sims, relevance)
    want = {}
    for name, ranks in (("i2t", want_i2t), ("t2i", want_t2i)):
        kept = [r for r in ranks if r >= 0]
        for k in ks:
            want[f"{name}_rel_r{k}"] = 100.0 * sum(1 for r in kept if r < k) / len(kept)
    want["rel_rsum"] = sum(want.values())
    got = relevance_recall(sims, relevance, ks, chunk_size=5)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_relevance_of_paired_gt_only_equals_standard_ranks():
    sims = untied(10, 40, seed=12)
    c2i = variable_map(10, 40, 12)
    relevance = np.zeros((10, 40), dtype=bool)
    relevance[c2i, np.arange(40)] = True
    got_i2t, got_t2i = relevance_ranks(sims, relevance, chunk_size=3)
    want_i2t, want_t2i = loop_ranks_argsort(sims, c2i)
    assert got_i2t.tolist() == want_i2t and got_t2i.tolist() == want_t2i


# ---------------------------------------------------------------- bad input


def test_nan_is_rejected_with_its_position():
    sims = untied(5, 10, seed=13)
    sims[3, 6] = np.nan
    for matrix in (sims, torch.from_numpy(sims)):
        with pytest.raises(VsekitError, match=r"NaN at \[3, 6\]"):
            retrieval_metrics(matrix, [j // 2 for j in range(10)], chunk_size=2)
    with pytest.raises(VsekitError, match="NaN"):
        relevance_recall(sims, np.eye(5, 10, dtype=bool))


def test_nan_in_a_ground_truth_entry_is_rejected():
    sims = untied(4, 4, seed=14).astype(np.float16)
    sims[1, 1] = np.nan
    with pytest.raises(VsekitError, match=r"NaN at \[1, 1\]"):
        retrieval_ranks(sims, [0, 1, 2, 3])


@pytest.mark.parametrize(("c2i", "message"), [
    ([0, 1, 2], r"shape \(3,\) but the similarity matrix has 4 captions"),
    ([[0, 1], [2, 3]], r"shape \(2, 2\)"),
    ([0, 1, 4, 1], r"caption_to_image\[2\] = 4 is outside the image range 0..3"),
    ([0, -1, 2, 1], r"caption_to_image\[1\] = -1 is outside"),
    ([0.0, 1.0, 2.0, 3.0], "pass integer image indices"),
    (torch.tensor([True, False, True, False]), "pass integer image indices"),
])
def test_bad_caption_map_is_rejected(c2i, message):
    with pytest.raises(VsekitError, match=message):
        retrieval_metrics(untied(4, 4, seed=15), c2i)


@pytest.mark.parametrize(("sims", "message"), [
    (np.zeros(4), "must be 2-D"),
    (np.zeros((0, 4)), "at least one row and column"),
    (np.zeros((4, 4), dtype=np.int64), "dtype int64; pass float16, float32 or float64"),
    (torch.zeros(4, 4, dtype=torch.int32), "dtype torch.int32"),
    (np.zeros((4, 4), dtype=object), "dtype object"),
])
def test_bad_similarity_matrix_is_rejected(sims, message):
    with pytest.raises(VsekitError, match=message):
        retrieval_ranks(sims, [0, 1, 2, 3])


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size_is_rejected(chunk_size):
    with pytest.raises(VsekitError, match="chunk_size must be a positive integer"):
        retrieval_ranks(untied(4, 4, seed=16), [0, 1, 2, 3], chunk_size)


def test_bad_relevance_is_rejected():
    sims = untied(4, 6, seed=17)
    with pytest.raises(VsekitError, match=r"relevance has shape \(6, 4\)"):
        relevance_recall(sims, np.ones((6, 4), dtype=bool))
    with pytest.raises(VsekitError, match="pass a boolean matrix"):
        relevance_recall(sims, np.ones((4, 6)))
    with pytest.raises(VsekitError, match="no query with a ground truth"):
        relevance_recall(sims, np.zeros((4, 6), dtype=bool))


def test_bad_ranks_and_cutoffs_are_rejected():
    with pytest.raises(VsekitError, match="no query with a ground truth"):
        metrics_from_ranks([-1, -1], [0])
    with pytest.raises(VsekitError, match="must be 1-D"):
        metrics_from_ranks([[0]], [0])
    with pytest.raises(VsekitError, match="positive integers"):
        recall_at_k([0, 1], (0, 5))


# ---------------------------------------------------------------- benchmark smoke run


def test_eval_speed_benchmark_runs(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_speed.py"
    spec = importlib.util.spec_from_file_location("eval_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--images", "12", "--captions", "50", "--dim", "8"])
    printed = capsys.readouterr().out
    assert "12 images × 50 captions, 8-d" in printed and "per-query argsort loop" in printed
    assert result["loop"] > 0 and result["metrics_warm"] > 0
