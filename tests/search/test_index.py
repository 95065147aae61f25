"""FAISS indexes: exact search equals brute force, saved folders load back, approximate
kinds find what exact search finds, recall helpers against plain loops, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vsekit.errors import VsekitError
from vsekit.search.index import (
    IndexSpec,
    SearchIndex,
    approx_recall,
    build_faiss_index,
    default_nlist,
    drop_self,
    recall_at_k,
    search_faiss,
    spec_meta,
)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n_clusters: int, per: int, dim: int) -> np.ndarray:
    centres = unit_rows(rng, n_clusters, dim)
    x = np.repeat(centres, per, axis=0) + 0.15 * rng.standard_normal((n_clusters * per, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(emb: np.ndarray, queries: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.topk(torch.from_numpy(queries) @ torch.from_numpy(emb).T, k, dim=1)


def test_flat_index_round_trip_equals_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb, queries = unit_rows(rng, 300, 24), unit_rows(rng, 7, 24)
    items = [{"id": f"img{i}", "path": None} for i in range(300)]
    index = SearchIndex(build_faiss_index(emb, IndexSpec()), items, {"note": "é ✓"})
    index.save(tmp_path / "idx")
    loaded = SearchIndex.load(tmp_path / "idx")
    assert loaded.items == items and loaded.meta["note"] == "é ✓"
    assert (loaded.meta["dim"], loaded.meta["count"], len(loaded), loaded.dim) == (24, 300, 300, 24)
    scores, ids = brute_force(emb, queries, 10)
    hits = loaded.search(queries, 10)
    for q in range(len(queries)):
        assert [h["rank"] for h in hits[q]] == list(range(1, 11))
        assert [h["id"] for h in hits[q]] == [f"img{i}" for i in ids[q].tolist()]
        np.testing.assert_allclose([h["score"] for h in hits[q]], scores[q].numpy(), atol=1e-5)


def test_k_beyond_the_index_returns_every_row() -> None:
    emb = unit_rows(np.random.default_rng(1), 5, 4)
    scores, ids = search_faiss(build_faiss_index(emb, IndexSpec()), emb[:2], 50)
    assert ids.shape == (2, 5) and sorted(ids[0].tolist()) == list(range(5))
    assert ids[0, 0] == 0 and ids[1, 0] == 1 and np.all(np.diff(scores, axis=1) <= 1e-6)


def recall_reference(found: np.ndarray, truth: np.ndarray) -> float:
    per_query = []
    for f_row, t_row in zip(found.tolist(), truth.tolist(), strict=True):
        wanted = [t for t in t_row if t >= 0]
        if not wanted:
            per_query.append(1.0)
            continue
        per_query.append(sum(1 for t in wanted if t in f_row) / len(wanted))
    return sum(per_query) / len(per_query)


@pytest.mark.parametrize("seed", range(5))
def test_recall_at_k_matches_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.permutation(30)[:8] for _ in range(12)])
    found = np.stack([rng.permutation(30)[:10] for _ in range(12)])
    truth[rng.random(truth.shape) < 0.2] = -1
    found[rng.random(found.shape) < 0.2] = -1
    truth[3] = -1  # a query without true hits
    assert recall_at_k(found, truth) == pytest.approx(recall_reference(found, truth))
    assert recall_at_k(truth, truth) == 1.0
    assert recall_at_k(np.full_like(found, -1), truth) == pytest.approx(1 / 12)  # row 3 only


def drop_self_reference(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    rows = []
    for row, me in zip(ids.tolist(), self_ids.tolist(), strict=True):
        row = list(row)
        if me in row:
            row.remove(me)
        else:
            row.pop()
        rows.append(row[:k])
    return np.array(rows)


def test_drop_self_matches_loops() -> None:
    rng = np.random.default_rng(0)
    ids = np.stack([rng.permutation(20)[:6] for _ in range(30)])
    self_ids = np.where(rng.random(30) < 0.6, ids[np.arange(30), rng.integers(0, 6, 30)], 99)
    for k in (5, 3):
        np.testing.assert_array_equal(drop_self(ids, self_ids, k),
                                      drop_self_reference(ids, self_ids, k))


def test_approximate_kinds_find_what_exact_search_finds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb, queries = clustered(rng, 40, 50, 32), clustered(rng, 40, 2, 32)
    _, truth = brute_force(emb, queries, 10)
    full_probe = build_faiss_index(emb, IndexSpec("ivf", nlist=20, nprobe=20))
    one_probe = build_faiss_index(emb, IndexSpec("ivf", nlist=20, nprobe=1))
    hnsw = build_faiss_index(emb, IndexSpec("hnsw", hnsw_m=16, ef_search=200))
    results = {}
    for name, index in (("full", full_probe), ("one", one_probe), ("hnsw", hnsw)):
        _, found = search_faiss(index, queries, 10)
        results[name] = recall_reference(found, truth.numpy())
        assert approx_recall(index, emb, queries, 10) == pytest.approx(results[name])
    assert results["full"] == 1.0  # visiting every cell is exhaustive
    assert 0.3 < results["one"] < 0.9 and results["hnsw"] >= 0.95
    # Leave-one-out: queries are indexed rows, each removed from its own results.
    rows = np.arange(0, 2000, 97)
    exact = torch.from_numpy(emb[rows]) @ torch.from_numpy(emb).T
    exact[torch.arange(len(rows)), torch.from_numpy(rows)] = -10
    loo_truth = exact.topk(10, dim=1).indices.numpy()
    _, found = search_faiss(one_probe, emb[rows], 11)
    expected = recall_reference(drop_self_reference(found, rows, 10), loo_truth)
    assert approx_recall(one_probe, emb, emb[rows], 10, rows) == pytest.approx(expected)
    # nprobe and efSearch travel with the saved index.
    SearchIndex(one_probe, [{}] * 2000, {}).save(tmp_path / "ivf")
    assert SearchIndex.load(tmp_path / "ivf").faiss_index.nprobe == 1
    assert spec_meta(IndexSpec("ivf", nlist=20, nprobe=50), full_probe)["params"] == {
        "nlist": 20, "nprobe": 20}


def test_default_nlist() -> None:
    assert [default_nlist(n) for n in (1, 38, 39, 1000, 5000, 40455)] == [1, 1, 1, 25, 128, 805]


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    emb = unit_rows(np.random.default_rng(0), 20, 8)
    index = build_faiss_index(emb, IndexSpec())
    with pytest.raises(VsekitError, match="are 5-d but the index holds 8-d"):
        search_faiss(index, emb[:2, :5], 3)
    for k in (0, -3):
        with pytest.raises(VsekitError, match="k must be at least 1"):
            search_faiss(index, emb[:2], k)
    with pytest.raises(VsekitError, match="NaN"):
        search_faiss(index, np.full((1, 8), np.nan, dtype=np.float32), 3)
    with pytest.raises(VsekitError, match="nlist must be at most the number of items"):
        build_faiss_index(emb, IndexSpec("ivf", nlist=21))
    with pytest.raises(VsekitError, match="index kind must be one of flat, ivf, hnsw"):
        build_faiss_index(emb, IndexSpec("lsh"))
    with pytest.raises(VsekitError, match="--ef-search must be at least 1"):
        build_faiss_index(emb, IndexSpec("hnsw", ef_search=0))


def test_missing_or_damaged_index_folder(tmp_path: Path) -> None:
    with pytest.raises(VsekitError, match="not found; build one"):
        SearchIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VsekitError, match="is not a vsekit index"):
        SearchIndex.load(tmp_path / "empty")
    emb = unit_rows(np.random.default_rng(0), 6, 4)
    folder = tmp_path / "idx"
    SearchIndex(build_faiss_index(emb, IndexSpec()), [{"id": str(i)} for i in range(6)],
                {}).save(folder)
    with pytest.raises(VsekitError, match="already holds an index; pass --force"):
        SearchIndex(build_faiss_index(emb, IndexSpec()), [{}] * 6, {}).save(folder)
    (folder / "items.json").write_text(json.dumps([{"id": "0"}]))
    with pytest.raises(VsekitError, match="holds 6 4-d vectors, items.json 1 items"):
        SearchIndex.load(folder)
    (folder / "index.faiss").write_bytes(b"garbage bytes")
    with pytest.raises(VsekitError, match="index.faiss cannot be read"):
        SearchIndex.load(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(VsekitError, match="is damaged"):
        SearchIndex.load(folder)
