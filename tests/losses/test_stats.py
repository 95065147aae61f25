"""Similarity statistics against plain-loop references of the reference algorithm."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vsekit.losses.stats import (
    Observations,
    SimilarityStats,
    hardest_negatives,
    hardest_zero_diagonal,
    inbatch_observations,
    mutual_top1,
    pool_observations,
)

# --------------------------------------------------------------------------- loop references


def loop_argmax(values: list[float]) -> int:
    best = 0
    for k, v in enumerate(values):
        if v > values[best]:
            best = k
    return best


def loop_mutual_top1(a: list[list[float]]) -> list[bool]:
    n = len(a)
    return [loop_argmax(a[i]) == i and loop_argmax([a[j][i] for j in range(n)]) == i
            for i in range(n)]


def loop_hardest_zero_diag(a: list[list[float]]) -> tuple[list[float], list[float]]:
    """The reference's max after setting the diagonal to 0."""
    n = len(a)
    rows = [max(0.0 if j == i else a[i][j] for j in range(n)) for i in range(n)]
    cols = [max(0.0 if j == i else a[j][i] for j in range(n)) for i in range(n)]
    return rows, cols


class LoopReferenceStats:
    """AverageSims / VarianceSims of LuminosityX/FNE model.py, fed as average_sims_scores."""

    def __init__(self) -> None:
        self.pos_sum = self.neg_sum = 0.0
        self.pos_n = self.neg_n = 0
        self.pos_s2 = self.neg_s2 = 0.0

    def update_batch(self, a: list[list[float]]) -> None:
        qualifies = loop_mutual_top1(a)
        rows, cols = loop_hardest_zero_diag(a)
        for i, ok in enumerate(qualifies):
            if ok:
                self.pos_sum += a[i][i]
                self.pos_n += 1
                self.neg_sum += rows[i] + cols[i]
                self.neg_n += 2
        pos_avg = self.pos_sum / self.pos_n if self.pos_n else 0.0
        neg_avg = self.neg_sum / self.neg_n if self.neg_n else 0.0
        for i, ok in enumerate(qualifies):
            if ok:
                self.pos_s2 += (a[i][i] - pos_avg) ** 2
                self.neg_s2 += (rows[i] - neg_avg) ** 2 + (cols[i] - neg_avg) ** 2

    def values(self) -> dict[str, float]:
        return {"count": self.pos_n,
                "pos_mean": self.pos_sum / self.pos_n if self.pos_n else 0.0,
                "neg_mean": self.neg_sum / self.neg_n if self.neg_n else 0.0,
                "pos_var": self.pos_s2 / (self.pos_n - 1) if self.pos_n > 1 else 0.0,
                "neg_var": self.neg_s2 / (self.neg_n - 1) if self.neg_n > 1 else 0.0}


def sample_variance(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)


def correlated_batch(seed: int, batch: int, dim: int = 6, noise: float = 0.7) -> torch.Tensor:
    """A float64 in-batch similarity matrix where most pairs are mutually top-1."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    img = torch.nn.functional.normalize(base + noise * torch.randn(batch, dim, generator=gen,
                                                                   dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(base + noise * torch.randn(batch, dim, generator=gen,
                                                                   dtype=torch.float64), dim=1)
    return img @ txt.T


def stats_values(stats: SimilarityStats) -> dict[str, float]:
    return {"count": float(stats.count), "pos_mean": float(stats.pos_mean),
            "neg_mean": float(stats.neg_mean), "pos_var": float(stats.pos_var),
            "neg_var": float(stats.neg_var)}


# --------------------------------------------------------------------------- selection rules


@pytest.mark.parametrize("seed", range(5))
def test_mutual_top1_and_hardest_match_loops(seed: int) -> None:
    a = correlated_batch(seed, batch=9)
    assert mutual_top1(a).tolist() == loop_mutual_top1(a.tolist())
    rows, cols = hardest_zero_diagonal(a)
    ref_rows, ref_cols = loop_hardest_zero_diag(a.tolist())
    assert rows.tolist() == ref_rows
    assert cols.tolist() == ref_cols


@pytest.mark.parametrize("seed", range(3))
def test_anchor_rows_give_one_process_observations(seed: int) -> None:
    """Under DDP a rank passes its anchors' rows against all candidates and their positive
    columns; each rank's observations are its slice of the one-process ones (loop-checked)."""
    a = correlated_batch(seed, batch=8)
    qualifies = loop_mutual_top1(a.tolist())
    rows, cols = loop_hardest_zero_diag(a.tolist())
    for own in (range(0, 4), range(4, 8), range(2, 5)):
        index = torch.tensor(list(own))
        obs = inbatch_observations(a[index], a.T[index], index)
        assert obs.pos.tolist() == [float(a[i, i]) for i in own]
        assert obs.pos_valid.tolist() == [qualifies[i] for i in own]
        assert obs.neg.tolist() == [rows[i] for i in own] + [cols[i] for i in own]
        assert mutual_top1(a[index], a.T[index], index).tolist() == [qualifies[i] for i in own]


def test_fork_is_an_independent_copy() -> None:
    stats = SimilarityStats(exact_variance=True)
    stats.update(inbatch_observations(correlated_batch(1, batch=6)))
    fork = stats.fork()
    assert torch.equal(fork.moments, stats.moments) and fork.exact_variance
    before = stats.moments.clone()
    fork.update(inbatch_observations(correlated_batch(2, batch=6)))
    assert torch.equal(stats.moments, before) and not torch.equal(fork.moments, before)


def test_mutual_top1_ties_go_to_the_lowest_index() -> None:
    a = torch.tensor([[0.5, 0.5, 0.1],
                      [0.5, 0.5, 0.1],
                      [0.1, 0.1, 0.9]], dtype=torch.float64)
    # Row 1's max is tied between columns 0 and 1: argmax picks 0, so pair 1 fails.
    assert mutual_top1(a).tolist() == [True, False, True]
    assert loop_mutual_top1(a.tolist()) == [True, False, True]


def test_hardest_zero_diagonal_emulates_the_reference_zero() -> None:
    a = torch.tensor([[0.9, -0.2, -0.4],
                      [-0.3, 0.8, 0.1],
                      [-0.5, -0.1, 0.7]], dtype=torch.float64)
    rows, cols = hardest_zero_diagonal(a)
    assert rows.tolist() == [0.0, 0.1, 0.0]  # all off-diagonal values < 0 → 0
    assert cols.tolist() == [0.0, 0.0, 0.1]
    one_rows, one_cols = hardest_zero_diagonal(torch.tensor([[0.7]], dtype=torch.float64))
    assert one_rows.tolist() == [0.0] and one_cols.tolist() == [0.0]


def test_hardest_negatives_match_loop_and_all_masked_rows() -> None:
    gen = torch.Generator().manual_seed(3)
    sims = torch.randn(6, 11, generator=gen, dtype=torch.float64)
    mask = torch.rand(6, 11, generator=gen) < 0.4
    mask[2] = True
    sims[4, 3] = sims[4, 7] = 5.0  # tie: lowest index wins
    mask[4, 3] = mask[4, 7] = False
    values, index = hardest_negatives(sims, mask)
    for i in range(6):
        allowed = [j for j in range(11) if not mask[i, j]]
        if not allowed:
            assert values[i] == -math.inf and index[i] == 0
            continue
        best = max(allowed, key=lambda j: (float(sims[i, j]), -j))
        assert index[i] == best and values[i] == sims[i, best]
    assert index[4] == 3


def test_pool_observations_match_loop() -> None:
    gen = torch.Generator().manual_seed(4)
    pos_i2t, pos_t2i = torch.rand(7, generator=gen), torch.rand(7, generator=gen)
    hard_i2t, hard_t2i = torch.rand(7, generator=gen), torch.rand(7, generator=gen)
    hard_t2i[5] = -math.inf  # every pool entry masked for this anchor
    obs = pool_observations(pos_i2t, hard_i2t, pos_t2i, hard_t2i)
    for i in range(7):
        ok = bool(pos_i2t[i] > hard_i2t[i] and pos_t2i[i] > hard_t2i[i])
        assert obs.pos_valid[i] == ok and obs.pos_valid[7 + i] == ok
        assert obs.neg_valid[i] == ok
        assert obs.neg_valid[7 + i] == (ok and math.isfinite(float(hard_t2i[i])))
    assert torch.equal(obs.pos, torch.cat([pos_i2t, pos_t2i]))


# --------------------------------------------------------------------------- running moments


def test_reference_variance_matches_loop_over_batches() -> None:
    stats, ref = SimilarityStats(), LoopReferenceStats()
    for step in range(6):
        a = correlated_batch(step, batch=8 + step)
        stats.update(inbatch_observations(a))
        ref.update_batch(a.tolist())
        for key, value in ref.values().items():
            assert stats_values(stats)[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert ref.pos_n > 10


def test_reference_variance_is_not_the_sample_variance_but_exact_mode_is() -> None:
    approx, exact = SimilarityStats(), SimilarityStats(exact_variance=True)
    seen: list[float] = []
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        values = torch.rand(4 + step, generator=gen, dtype=torch.float64) + step
        obs = Observations(values, torch.ones_like(values, dtype=torch.bool), values,
                           torch.ones_like(values, dtype=torch.bool))
        approx.update(obs)
        exact.update(obs)
        seen += values.tolist()
        assert float(exact.pos_var) == pytest.approx(sample_variance(seen), rel=1e-12)
        assert float(exact.pos_mean) == pytest.approx(sum(seen) / len(seen), rel=1e-12)
    assert float(approx.pos_var) != pytest.approx(sample_variance(seen), rel=1e-3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(-1, 1), st.booleans()), min_size=0, max_size=6),
                min_size=1, max_size=5),
       st.booleans())
def test_masked_updates_match_loops(batches: list[list[tuple[float, bool]]], exact: bool) -> None:
    stats = SimilarityStats(exact_variance=exact)
    n, total, s2, seen = 0, 0.0, 0.0, []
    for batch in batches:
        values = torch.tensor([v for v, _ in batch], dtype=torch.float64)
        valid = torch.tensor([ok for _, ok in batch], dtype=torch.bool)
        stats.update(Observations(values, valid, values, valid))
        kept = [v for v, ok in batch if ok]
        n, total, seen = n + len(kept), total + sum(kept), seen + kept
        s2 += sum((v - total / max(n, 1)) ** 2 for v in kept)
        expected_var = (sample_variance(seen) if exact and n > 1
                        else s2 / (n - 1) if n > 1 else 0.0)
        assert float(stats.count) == n
        assert float(stats.pos_mean) == pytest.approx(total / n if n else 0.0, abs=1e-12)
        assert float(stats.pos_var) == pytest.approx(expected_var, rel=1e-9, abs=1e-12)
        assert torch.isfinite(stats.moments).all()


class FakeAllReduce:
    """all_reduce(sum) across ranks simulated by threads meeting at a barrier."""

    def __init__(self, ranks: int) -> None:
        self.barrier = threading.Barrier(ranks)
        self.slots: list[torch.Tensor | None] = [None] * ranks

    def for_rank(self, rank: int):
        def reduce(sums: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = sums.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()
            return total

        return reduce


@pytest.mark.parametrize("exact", [False, True])
def test_reduce_hook_merges_ranks_like_one_process(exact: bool) -> None:
    history = inbatch_observations(correlated_batch(99, batch=5))
    shards = [inbatch_observations(correlated_batch(10 + k, batch=6 + k)) for k in range(2)]
    joint = Observations(*(torch.cat([getattr(o, f) for o in shards])
                           for f in ("pos", "pos_valid", "neg", "neg_valid")))
    single = SimilarityStats(exact_variance=exact)
    single.update(history)
    single.update(joint)

    start = SimilarityStats(exact_variance=exact)
    start.update(history)  # statistics every rank already shares
    reducer = FakeAllReduce(2)
    ranks = [SimilarityStats(exact_variance=exact, reduce=reducer.for_rank(r)) for r in range(2)]
    for stats in ranks:
        stats.moments.copy_(start.moments)
    threads = [threading.Thread(target=ranks[r].update, args=(shards[r],)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for stats in ranks:
        torch.testing.assert_close(stats.moments, single.moments, rtol=1e-12, atol=1e-12)


def test_reset_state_dict_and_empty_statistics() -> None:
    stats = SimilarityStats()
    assert stats_values(stats) == {"count": 0.0, "pos_mean": 0.0, "neg_mean": 0.0,
                                   "pos_var": 0.0, "neg_var": 0.0}
    stats.update(inbatch_observations(correlated_batch(1, batch=10)))
    restored = SimilarityStats()
    restored.load_state_dict(stats.state_dict())
    assert torch.equal(restored.moments, stats.moments)
    diag = stats.diagnostics()
    assert set(diag) == {"pos_mean", "pos_std", "neg_mean", "neg_std"}
    assert float(diag["pos_std"]) == pytest.approx(math.sqrt(float(stats.pos_var)), rel=1e-6)
    stats.reset()
    assert float(stats.moments.abs().sum()) == 0.0


def test_update_ignores_invalid_values_and_autograd() -> None:
    stats = SimilarityStats()
    values = torch.tensor([0.5, float("nan")], requires_grad=True)
    valid = torch.tensor([True, False])
    stats.update(Observations(values * 1.0, valid, values * 1.0, valid))
    assert float(stats.count) == 1 and float(stats.pos_mean) == 0.5
    assert not stats.moments.requires_grad
