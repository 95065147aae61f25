"""FNE: weights against a port of the reference and a plain-loop reference, sampling, the loss
path, and the registered module (momentum copy, queue, warm-up, checkpoints, no host sync)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from vsekit.config import Config, ModelConfig
from vsekit.data.dataset import Batch
from vsekit.distributed import Shard
from vsekit.errors import VsekitError
from vsekit.losses.base import LOSSES
from vsekit.losses.fne import (
    VAR_FLOOR,
    FNELoss,
    FNEParams,
    Pools,
    draw_one_per_row,
    fallback_index,
    fne_loss_path,
    log_odds,
    negative_sampling_weights,
    reference_posterior,
    sampling_weights,
    step_generator,
)
from vsekit.losses.queue import MemoryQueue
from vsekit.losses.ranking import exclusion_mask, vsepp_loss
from vsekit.losses.stats import SimilarityStats, inbatch_observations, pool_observations

DEFAULTS = {"margin": 0.2, "tau": 0.5, "prior_ratio": 10000.0, "false_margin": 0.999,
            "min_count": 200}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Stats:
    """The statistics protocol with plain floats."""

    pos_mean: float
    pos_var: float
    neg_mean: float
    neg_var: float
    count: float


READY = Stats(0.6, 0.004, 0.35, 0.01, 500)
TIGHT = Stats(0.6, 0.01, 0.3, 0.001, 500)  # heavy positive tail: P → 1 for high s
NOT_READY = Stats(0.6, 0.004, 0.35, 0.01, 200)  # count must be strictly > min_count


# --------------------------------------------------------------------------- references


def port_choice_negative_weights(pos_sims: torch.Tensor, sims: torch.Tensor,
                                 mask: torch.Tensor, stats: Stats, nums_right_sims: int,
                                 index: torch.Tensor, margin: float) -> torch.Tensor:
    """Faithful port of the weight part of LuminosityX/FNE loss.py ``choice_negative``."""
    tau, match_para, false_margin = 0.5, 10000, 0.999
    neg_scores = torch.exp(-(sims - pos_sims) ** 2 * tau)
    if stats.count > nums_right_sims:
        mean_pos, var_pos = torch.tensor(stats.pos_mean, dtype=sims.dtype), torch.tensor(
            stats.pos_var, dtype=sims.dtype)
        mean_neg, var_neg = torch.tensor(stats.neg_mean, dtype=sims.dtype), torch.tensor(
            stats.neg_var, dtype=sims.dtype)
        pos_p = torch.distributions.Normal(mean_pos, torch.sqrt(var_pos)).log_prob(sims).exp()
        neg_p = torch.distributions.Normal(mean_neg, torch.sqrt(var_neg)).log_prob(sims).exp()
        match_p = pos_p / (pos_p + (match_para - 1) * neg_p)
        no_match_p = 1 - match_p
        match_p = torch.exp(-match_p * tau)
        match_mask = no_match_p < false_margin
        neg_scores[match_mask] = match_p[match_mask]
    neg_scores = neg_scores.masked_fill_(mask, 0)
    margin_mask = sims <= (torch.tensor(stats.pos_mean, dtype=sims.dtype) - margin)
    neg_scores = neg_scores.masked_fill_(margin_mask, 0)
    for i, sum_i in enumerate(neg_scores.sum(1)):
        if sum_i == 0:
            neg_scores[i, index[i]] = 1.0
    return neg_scores


def port_fallback(sims: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                  margin: float) -> torch.Tensor:
    """The reference's ``cost.max(1)[1]`` over the masked hinge costs."""
    cost = (margin + sims - pos.reshape(-1, 1)).clamp(min=0).masked_fill_(mask, 0)
    return cost.max(1)[1]


def loop_log_odds(s: float, st: Stats, prior_ratio: float) -> float:
    var_p, var_n = max(st.pos_var, VAR_FLOOR), max(st.neg_var, VAR_FLOOR)
    log_p = -(s - st.pos_mean) ** 2 / (2 * var_p) - 0.5 * math.log(2 * math.pi * var_p)
    log_n = -(s - st.neg_mean) ** 2 / (2 * var_n) - 0.5 * math.log(2 * math.pi * var_n)
    return log_p - log_n - math.log(prior_ratio - 1)


def loop_sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def loop_weights(sims: list[list[float]], pos: list[float], mask: list[list[bool]], st: Stats,
                 fallback: list[int], margin: float = 0.2, tau: float = 0.5,
                 prior_ratio: float = 10000.0, false_margin: float = 0.999,
                 min_count: int = 200) -> list[list[float]]:
    """Methods.md §1.4 element by element, posterior in log space (the mathematical limit)."""
    threshold = math.log((1 - false_margin) / false_margin)
    out = []
    for i, row in enumerate(sims):
        weights = []
        for j, s in enumerate(row):
            w = math.exp(-tau * (s - pos[i]) ** 2)
            if st.count > min_count:
                ell = loop_log_odds(s, st, prior_ratio)
                if ell > threshold:
                    w = math.exp(-tau * loop_sigmoid(ell))
            if mask[i][j] or s <= st.pos_mean - margin:
                w = 0.0
            weights.append(w)
        if all(w == 0 for w in weights):
            weights[fallback[i]] = 1.0
        out.append(weights)
    return out


def loop_fallback(sims: list[list[float]], pos: list[float], mask: list[list[bool]],
                  margin: float) -> list[int]:
    result = []
    for i, row in enumerate(sims):
        costs = [0.0 if mask[i][j] else max(margin + s - pos[i], 0.0) for j, s in enumerate(row)]
        best = 0
        for j, c in enumerate(costs):
            if c > costs[best]:
                best = j
        result.append(best)
    return result


def random_case(seed: int, batch: int = 6, pool: int = 40, low: float = -0.2, high: float = 0.95,
                dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """sims [B, N] (column i of the first B is the positive), pos [B], id mask [B, N]."""
    gen = torch.Generator().manual_seed(seed)
    sims = low + (high - low) * torch.rand(batch, pool, generator=gen, dtype=dtype)
    ids = torch.randint(0, batch + 3, (pool,), generator=gen)
    ids[:batch] = torch.arange(batch)
    mask = ids[:batch, None] == ids[None, :]
    pos = sims[:, :batch].diagonal().clone()
    return sims, pos, mask


def as_lists(*tensors: torch.Tensor) -> list:
    return [t.tolist() for t in tensors]


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("stats", [READY, TIGHT, NOT_READY, Stats(0.55, 0.002, 0.4, 0.02, 201),
                                   Stats(0.0, 0.0, 0.0, 0.0, 0)],
                         ids=["ready", "tight", "not-ready", "just-ready", "no-stats"])
@pytest.mark.parametrize("seed", range(4))
def test_weights_match_reference_port_float64(stats: Stats, seed: int) -> None:
    sims, pos, mask = random_case(seed)
    index = port_fallback(sims, pos, mask, 0.2)
    expected = port_choice_negative_weights(pos[:, None], sims.clone(), mask, stats, 200, index,
                                            0.2)
    found = negative_sampling_weights(sims, pos, mask, stats, fallback_index(sims, pos, mask, 0.2))
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(fallback_index(sims, pos, mask, 0.2), index)


def test_parity_cases_exercise_the_false_negative_branch() -> None:
    sims, pos, mask = random_case(0, pool=200)
    found = sampling_weights(sims, pos, mask, TIGHT, fallback_index(sims, pos, mask, 0.2))
    on_branch = found.keep & (found.posterior > 1e-3)
    assert on_branch.sum() > 10
    kernel = torch.exp(-0.5 * (sims - pos[:, None]) ** 2)
    assert not torch.allclose(found.weights[on_branch], kernel[on_branch])


@pytest.mark.parametrize("stats", [READY, TIGHT, NOT_READY], ids=["ready", "tight", "not-ready"])
@pytest.mark.parametrize("seed", range(3))
def test_weights_match_loop_reference(stats: Stats, seed: int) -> None:
    sims, pos, mask = random_case(10 + seed, batch=5, pool=23)
    fallback = fallback_index(sims, pos, mask, 0.2)
    found = negative_sampling_weights(sims, pos[:, None], mask, stats, fallback)
    expected = loop_weights(*as_lists(sims, pos, mask), stats, fallback.tolist())
    torch.testing.assert_close(found, torch.tensor(expected, dtype=torch.float64), rtol=1e-9,
                               atol=1e-12)


@pytest.mark.parametrize("options", [
    {"margin": 0.1, "tau": 2.0, "prior_ratio": 50.0, "false_margin": 0.9, "min_count": 3},
    {"margin": 0.0, "tau": 0.0, "prior_ratio": 2.0, "false_margin": 0.5, "min_count": 0},
])
def test_weights_follow_every_parameter(options: dict) -> None:
    sims, pos, mask = random_case(3, batch=4, pool=30)
    fallback = fallback_index(sims, pos, mask, options["margin"])
    found = negative_sampling_weights(sims, pos, mask, READY, fallback, **options)
    expected = loop_weights(*as_lists(sims, pos, mask), READY, fallback.tolist(), **options)
    torch.testing.assert_close(found, torch.tensor(expected, dtype=torch.float64), rtol=1e-9,
                               atol=1e-12)


def test_false_margin_one_always_takes_the_posterior_branch() -> None:
    sims, pos, mask = random_case(4, batch=3, pool=12)
    found = sampling_weights(sims, pos, mask, READY, fallback_index(sims, pos, mask, 0.2),
                             false_margin=1.0)
    expected = torch.exp(-0.5 * found.posterior)
    torch.testing.assert_close(found.weights[found.keep], expected[found.keep])


def test_all_positive_rows_ties_and_cut_down_rows_fall_back() -> None:
    sims = torch.tensor([[0.9, 0.8, 0.8, 0.1],    # ties at columns 1, 2 after the mask
                         [0.5, 0.7, 0.3, 0.2],    # every candidate masked
                         [0.1, 0.2, 0.95, 0.2],   # all below the cut-down, costs all 0
                         [0.3, 0.4, 0.3, 0.9]], dtype=torch.float64)
    mask = torch.tensor([[True, False, False, False],
                         [True, True, True, True],
                         [False, False, True, False],
                         [False, False, False, True]])
    pos = torch.tensor([0.9, 0.7, 0.95, 0.9], dtype=torch.float64)
    stats = Stats(0.9, 0.004, 0.35, 0.01, 0)  # cut-down at 0.7
    fallback = fallback_index(sims, pos, mask, 0.2)
    assert fallback.tolist() == loop_fallback(*as_lists(sims, pos, mask), 0.2) == [1, 0, 0, 0]
    found = sampling_weights(sims, pos, mask, stats, fallback)
    assert found.empty.tolist() == [False, True, True, True]
    assert found.weights[1].tolist() == [1.0, 0.0, 0.0, 0.0]  # masked fallback: cost 0
    assert found.weights[2].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert found.weights[0, 1] == found.weights[0, 2] == math.exp(-0.5 * 0.1 ** 2)
    expected = loop_weights(*as_lists(sims, pos, mask), stats, fallback.tolist())
    assert found.weights.tolist() == expected


def test_count_must_exceed_min_count() -> None:
    sims, pos, mask = random_case(5, batch=4, pool=25)
    fallback = fallback_index(sims, pos, mask, 0.2)
    at = negative_sampling_weights(sims, pos, mask, Stats(0.6, 0.01, 0.3, 0.001, 200), fallback)
    above = negative_sampling_weights(sims, pos, mask, Stats(0.6, 0.01, 0.3, 0.001, 201),
                                      fallback)
    kernel = negative_sampling_weights(sims, pos, mask, Stats(0.6, 0.01, 0.3, 0.001, 0), fallback)
    assert torch.equal(at, kernel) and not torch.equal(above, kernel)


@pytest.mark.parametrize("variance", [1e-6, 1e-10, 1e-14, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_variances_give_finite_weights_at_the_floored_limit(variance: float,
                                                                 dtype: torch.dtype) -> None:
    sims, pos, mask = random_case(6, batch=5, pool=30, dtype=dtype)
    sims[0, 7] = pos[0] = 0.6  # a candidate exactly at μ⁺
    stats = Stats(0.6, variance, 0.35, variance, 300)
    fallback = fallback_index(sims, pos, mask, 0.2)
    found = negative_sampling_weights(sims, pos, mask, stats, fallback)
    assert torch.isfinite(found).all()
    expected = loop_weights(*as_lists(sims.double(), pos.double(), mask), stats, fallback.tolist())
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(found.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=tol, atol=tol)


def test_underflow_gives_the_limit_and_reference_numerics_reproduce_the_reference() -> None:
    # float32 and σ² = 1e-4: far from both means both densities underflow (the reference's
    # 0/0 = NaN → kernel weight); p⁺ has the heavier tail, so the true posterior → 1 there.
    stats = Stats(0.6, 1e-3, 0.3, 1e-4, 300)
    sims = torch.tensor([[0.6, 1.5, -0.5, 0.45, 1.2]])
    pos = torch.tensor([0.9])
    mask = torch.zeros(1, 5, dtype=torch.bool)
    fallback = fallback_index(sims, pos, mask, 0.2)
    ported = port_choice_negative_weights(pos[:, None], sims.clone(), mask, stats, 200, fallback,
                                          0.2)
    posterior = reference_posterior(sims, stats, 10000.0)
    assert torch.isnan(posterior[0, 1]) and torch.isnan(posterior[0, 4])  # both underflow
    assert ported[0, 1] == pytest.approx(math.exp(-0.5 * 0.6 ** 2))  # kernel kept
    stable = negative_sampling_weights(sims, pos, mask, stats, fallback)
    assert torch.isfinite(stable).all()
    expected = loop_weights(*as_lists(sims.double(), pos.double(), mask), stats, [0])
    torch.testing.assert_close(stable.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    assert stable[0, 1] == pytest.approx(math.exp(-0.5))  # P → 1: weight e^(−τ)
    faithful = negative_sampling_weights(sims, pos, mask, stats, fallback,
                                         reference_numerics=True)
    torch.testing.assert_close(faithful, ported, rtol=0, atol=0)


def test_only_one_density_underflowing_matches_the_reference_outcomes() -> None:
    stats = Stats(0.6, 1e-3, 0.3, 1e-4, 300)
    sims = torch.tensor([[0.62, 0.7]])  # p⁻ underflows → the reference's P = 1
    posterior = reference_posterior(sims, stats, 10000.0)
    assert posterior.tolist() == [[1.0, 1.0]]
    torch.testing.assert_close(torch.sigmoid(log_odds(sims, stats, 10000.0)), posterior)


@pytest.mark.parametrize("seed", range(3))
def test_log_odds_match_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    sims = torch.rand(4, 9, generator=gen, dtype=torch.float64) * 2 - 1
    for stats in (READY, TIGHT, Stats(0.7, 1e-8, 0.2, 0.03, 1)):
        found = log_odds(sims, stats, 10000.0)
        expected = [[loop_log_odds(s, stats, 10000.0) for s in row] for row in sims.tolist()]
        torch.testing.assert_close(found, torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-10, atol=1e-8)


def test_spec_example_posterior_stays_small() -> None:
    grid = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    stats = Stats(0.62, 0.004, 0.35, 0.01, 300)
    posterior = torch.sigmoid(log_odds(grid, stats, 10000.0))
    assert 0.06 < float(posterior.max()) < 0.07
    assert float(torch.exp(-0.5 * posterior).min()) > 0.96


def test_tensor_statistics_and_low_precision_inputs() -> None:
    sims, pos, mask = random_case(7, batch=4, pool=20, dtype=torch.float32)
    stats = SimilarityStats()
    stats.moments.copy_(torch.tensor([[300, 300 * 0.6, 299 * 0.01], [600, 600 * 0.3, 599 * 0.001]],
                                     dtype=torch.float64))
    fallback = fallback_index(sims, pos, mask, 0.2)
    as_floats = Stats(float(stats.pos_mean), float(stats.pos_var), float(stats.neg_mean),
                      float(stats.neg_var), float(stats.count))
    torch.testing.assert_close(negative_sampling_weights(sims, pos, mask, stats, fallback),
                               negative_sampling_weights(sims, pos, mask, as_floats, fallback))
    low = negative_sampling_weights(sims.bfloat16(), pos.bfloat16(), mask, stats, fallback)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, negative_sampling_weights(
        sims.bfloat16().float(), pos.bfloat16().float(), mask, stats, fallback))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 6), extra=st.integers(0, 12),
       mean=st.floats(-0.5, 0.9), log_var=st.floats(-14, -1), count=st.integers(0, 400))
def test_weight_properties(seed: int, batch: int, extra: int, mean: float, log_var: float,
                           count: int) -> None:
    sims, pos, mask = random_case(seed, batch=batch, pool=batch + extra, low=-1, high=1)
    stats = Stats(mean, 10 ** log_var, mean - 0.2, 10 ** (log_var + 0.5), count)
    fallback = fallback_index(sims, pos, mask, 0.2)
    found = sampling_weights(sims, pos, mask, stats, fallback)
    w = found.weights
    assert torch.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()
    assert (w.sum(dim=1) > 0).all()
    off = ~found.empty[:, None] & (mask | (sims <= mean - 0.2))
    assert (w[off] == 0).all()
    live = found.keep
    assert (w[live] >= math.exp(-0.5 * 4) - 1e-12).all()  # |s − s⁺| ≤ 2 for cosines


def test_nan_anchors_fall_back_instead_of_poisoning_the_draw() -> None:
    sims, pos, mask = random_case(8, batch=3, pool=10)
    sims[1] = float("nan")
    pos[2] = float("nan")
    fallback = fallback_index(sims, pos, mask, 0.2)
    found = sampling_weights(sims, pos, mask, READY, fallback)
    assert torch.isfinite(found.weights).all()
    assert found.empty.tolist() == [False, True, True]
    draw_one_per_row(found.weights, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- sampling


def test_draws_follow_the_weights_and_never_pick_zero_weights() -> None:
    weights = torch.tensor([[0.0, 1.0, 3.0, 0.0, 6.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0, 0.0, 2.5],
                            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    draws = 20000
    gen = torch.Generator().manual_seed(0)
    picked = torch.stack([draw_one_per_row(weights.repeat(100, 1), gen)
                          for _ in range(draws // 100)]).reshape(-1, 3)
    assert (picked[:, 1] == 5).all() and (picked[:, 2] == 0).all()
    counts = torch.bincount(picked[:, 0], minlength=6).double()
    expected = weights[0].double() / weights[0].sum() * draws
    assert counts[weights[0] == 0].sum() == 0
    sd = (expected * (1 - expected / draws)).sqrt()
    assert ((counts - expected).abs() <= 5 * sd + 1e-9).all()


def test_draws_are_deterministic_per_step_and_differ_between_steps() -> None:
    weights = torch.rand(16, 50, generator=torch.Generator().manual_seed(1))
    first = draw_one_per_row(weights, step_generator(3407, 5, torch.device("cpu")))
    again = draw_one_per_row(weights, step_generator(3407, 5, torch.device("cpu")))
    other = draw_one_per_row(weights, step_generator(3407, 6, torch.device("cpu")))
    assert torch.equal(first, again) and not torch.equal(first, other)
    cached = torch.Generator()
    assert step_generator(1, 2, torch.device("cpu"), cached) is cached


def test_sharded_draws_are_the_rows_of_one_global_draw() -> None:
    """Each DDP rank draws the global batch's uniforms and keeps its rows: the same negatives
    as one process."""
    weights = torch.rand(8, 30, generator=torch.Generator().manual_seed(4))
    weights[weights < 0.5] = 0
    cpu = torch.device("cpu")
    whole = draw_one_per_row(weights, step_generator(7, 3, cpu))
    parts = [draw_one_per_row(weights[r * 4:(r + 1) * 4], step_generator(7, 3, cpu),
                              Shard(r * 4, 4, 8)) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    assert bool((weights.gather(1, whole[:, None]) > 0).all())


def test_step_generator_seeds_other_ranks_apart() -> None:
    """The multinomial sampler's per-rank streams: rank 0 is the one-process stream."""
    cpu = torch.device("cpu")

    def draws(**kwargs: int) -> torch.Tensor:
        return torch.rand(5, generator=step_generator(7, 3, cpu, **kwargs))

    assert torch.equal(draws(), draws(rank=0))
    assert torch.equal(draws(rank=1), draws(rank=1))
    assert not torch.equal(draws(rank=1), draws()) and not torch.equal(draws(rank=1),
                                                                       draws(rank=2))


def test_draws_at_the_top_of_the_cdf_stay_on_positive_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a uniform of exactly 1 (beyond torch.rand's range) lands on a positive weight."""
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.ones(shape, dtype=kw["dtype"]))
    weights = torch.tensor([[0.0, 0.7, 0.0, 0.3, 0.0], [0.2, 0.0, 0.0, 0.0, 0.0]])
    assert draw_one_per_row(weights, torch.Generator()).tolist() == [3, 0]


# --------------------------------------------------------------------------- loss path


def path_inputs(seed: int, batch: int = 5, queue: int = 7, dim: int = 4
                ) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)

    img = unit(batch, dim).requires_grad_()
    txt = unit(batch, dim).requires_grad_()
    img_pool, cap_pool = unit(batch + queue, dim), unit(batch + queue, dim)
    ids = torch.randint(0, 4, (batch,), generator=gen)
    pool_ids = torch.cat([ids, torch.randint(-1, 6, (queue,), generator=gen)])
    mask = ids[:, None] == pool_ids[None, :]
    return img, txt, img_pool, cap_pool, mask


@pytest.mark.parametrize("source", ["inbatch", "pool"])
@pytest.mark.parametrize("seed", range(3))
def test_loss_path_matches_loop_over_the_draws(source: str, seed: int) -> None:
    img, txt, img_pool, cap_pool, mask = path_inputs(seed)
    sims_i2t, sims_t2i = (img @ cap_pool.T).detach(), (txt @ img_pool.T).detach()
    params = FNEParams(min_count=2, stats_source=source)
    stats, expected_stats = SimilarityStats(), SimilarityStats()
    result = fne_loss_path(img @ txt.T, img, txt, Pools(image=img_pool, caption=cap_pool), mask,
                           stats, params, torch.Generator().manual_seed(0))
    # statistics were updated first, from the right source
    if source == "inbatch":
        expected_stats.update(inbatch_observations((img @ txt.T).detach()))
    else:
        hard = [s.masked_fill(mask, -math.inf).max(1).values for s in (sims_i2t, sims_t2i)]
        pos = [s[:, :5].diagonal() for s in (sims_i2t, sims_t2i)]
        expected_stats.update(pool_observations(pos[0], hard[0], pos[1], hard[1]))
    assert torch.equal(stats.moments, expected_stats.moments)
    # the draws used the weights of the updated statistics; the hinge is a loop over them
    total, grads = 0.0, []
    for sims, pool, draw in ((sims_i2t, cap_pool, result.i2t), (sims_t2i, img_pool, result.t2i)):
        pos = sims[:, :5].diagonal()
        weights = negative_sampling_weights(sims, pos, mask, stats,
                                            fallback_index(sims, pos, mask, 0.2), min_count=2)
        torch.testing.assert_close(draw.weights.weights, weights, rtol=1e-12, atol=1e-15)
        grad = torch.zeros(5, 4, dtype=torch.float64)
        for i, j in enumerate(draw.index.tolist()):
            assert weights[i, j] > 0
            hinge = 0.2 + float(sims[i, j]) - float(sims[i, i])
            if not mask[i, j] and hinge > 0:
                total += hinge
                grad[i] += (pool[j] - pool[i]) / 5
        grads.append(grad)
    assert float(result.loss.detach()) == pytest.approx(total / 5, rel=1e-12, abs=1e-15)
    result.loss.backward()  # gradient reaches only the anchors
    torch.testing.assert_close(img.grad, grads[0])
    torch.testing.assert_close(txt.grad, grads[1])


def test_loss_path_diagnostics_match_loops() -> None:
    img, txt, img_pool, cap_pool, mask = path_inputs(1, batch=6, queue=20)
    stats = SimilarityStats()
    stats.moments.copy_(torch.tensor([[300, 300 * 0.3, 299 * 0.01], [600, 0.0, 599 * 0.001]],
                                     dtype=torch.float64))
    params = FNEParams(min_count=100, margin=0.5)
    with torch.no_grad():
        result = fne_loss_path(img @ txt.T, img, txt, Pools(image=img_pool, caption=cap_pool),
                               mask, stats, params, torch.Generator().manual_seed(2))
    draws = [result.i2t, result.t2i]
    kept = sum(int(d.weights.keep.sum()) for d in draws)
    likely = sum(int(((d.weights.posterior > 0.5) & d.weights.keep).sum()) for d in draws)
    sampled = [float(d.weights.posterior[i, j]) for d in draws for i, j in
               enumerate(d.index.tolist())]
    same = [bool(mask[i, j]) for d in draws for i, j in enumerate(d.index.tolist())]
    diag = result.diagnostics
    assert float(diag["fne_candidates"]) == pytest.approx(kept / 12)
    assert float(diag["fne_p_over_half"]) == pytest.approx(likely / max(kept, 1))
    assert float(diag["fne_sampled_p"]) == pytest.approx(sum(sampled) / 12, rel=1e-6)
    assert float(diag["fne_same_id"]) == pytest.approx(sum(same) / 12)
    assert float(diag["fne_fallback"]) == pytest.approx(
        sum(int(d.weights.empty.sum()) for d in draws) / 12)
    assert float(diag["fne_ready"]) == 1.0
    assert float(diag["pos_mean"]) == pytest.approx(float(stats.pos_mean), rel=1e-6)
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in diag.values())


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize("key, value", [("margin", -0.1), ("tau", -1), ("prior_ratio", 1),
                                        ("false_margin", 0), ("false_margin", 1.5),
                                        ("min_count", -1), ("queue_size", -1),
                                        ("momentum", 1.5), ("warmup_epochs", -1), ("seed", -1)])
def test_bad_params_raise_one_line_errors(key: str, value: float) -> None:
    with pytest.raises(VsekitError, match=f"loss.{key}"):
        LOSSES.parse({"name": "fne", key: value}, "loss")


def test_params_parse_by_name_with_reference_defaults() -> None:
    name, params = LOSSES.parse({"name": "fne", "queue_size": 100}, "loss")
    assert name == "fne" and params.queue_size == 100
    defaults = FNEParams()
    assert (defaults.margin, defaults.tau, defaults.prior_ratio, defaults.false_margin,
            defaults.min_count, defaults.queue_size, defaults.momentum, defaults.warmup_epochs,
            defaults.seed) == (0.2, 0.5, 10000.0, 0.999, 200, 8224, 0.995, 1, None)
    with pytest.raises(VsekitError, match="stats_source"):
        LOSSES.parse({"name": "fne", "stats_source": "queue"}, "loss")
    assert isinstance(LOSSES.build(name, params), FNELoss)


# --------------------------------------------------------------------------- module


class ToyVSE(nn.Module):
    """The VSEModel interface on two linear encoders (text input: {"x": features})."""

    def __init__(self, din: int = 10, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.image_encoder = nn.Linear(din, dim)
        self.text_encoder = nn.Sequential(nn.Linear(din, dim), nn.Dropout(0.1))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_text(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.text_encoder(text["x"]), dim=-1)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(batch.images), self.encode_text(batch.text)


class ToyData:
    """24 images with 2 captions each; captions are a noisy linear view of the image."""

    def __init__(self, n_images: int = 24, din: int = 10) -> None:
        gen = torch.Generator().manual_seed(7)
        self.latent = torch.randn(n_images, din, generator=gen)
        mixing = torch.randn(din, din, generator=gen) / din ** 0.5
        self.caption_to_image = torch.arange(n_images).repeat_interleave(2)
        noise = 0.3 * torch.randn(len(self.caption_to_image), din, generator=gen)
        self.captions = self.latent[self.caption_to_image] @ mixing + noise

    def batch(self, step: int, size: int = 8) -> Batch:
        gen = torch.Generator().manual_seed(1000 + step)
        caps = torch.randperm(len(self.captions), generator=gen)[:size]
        imgs = self.caption_to_image[caps]
        return Batch(images=self.latent[imgs] + 0.1 * torch.randn(size, self.latent.shape[1],
                                                                  generator=gen),
                     text={"x": self.captions[caps]}, image_index=imgs, caption_index=caps,
                     image_ids=imgs)

    def recall_at_1(self, model: ToyVSE) -> float:
        model.eval()
        with torch.no_grad():
            img = model.encode_image(self.latent)
            txt = model.encode_text({"x": self.captions})
        model.train()
        return float(((txt @ img.T).argmax(1) == self.caption_to_image).float().mean())


def bound_loss(model: nn.Module, **params: object) -> FNELoss:
    name, parsed = LOSSES.parse({"name": "fne", **params}, "loss")
    loss = LOSSES.build(name, parsed)
    loss.bind(model=model, train_split=None, config=Config(model=ModelConfig(embed_dim=8)))
    return loss


def run_steps(model: ToyVSE, loss: FNELoss, data: ToyData, steps: range, steps_per_epoch: int,
              optimizer: torch.optim.Optimizer) -> list[float]:
    """The trainer's protocol: on_epoch_start, forward, loss(..., context), backward, step,
    commit."""
    losses = []
    for step in steps:
        epoch = step // steps_per_epoch
        if step % steps_per_epoch == 0:
            loss.on_epoch_start(epoch)
        batch = data.batch(step)
        img, txt = model(batch)
        out = loss(img, txt, batch.image_ids, epoch=epoch, step=step, batch=batch, model=model)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        loss.commit_step()
        losses.append(float(out.loss.detach()))
    return losses


def fresh_run(seed: int = 3407, **params: object) -> tuple[ToyVSE, FNELoss, torch.optim.Optimizer]:
    model = ToyVSE()
    loss = bound_loss(model, queue_size=12, min_count=3, seed=seed, **params)
    optimizer = torch.optim.Adam([p for p in (*model.parameters(), *loss.parameters())
                                  if p.requires_grad], lr=1e-2)
    return model, loss, optimizer


def test_unbound_loss_and_missing_context_raise() -> None:
    model = ToyVSE()
    _, params = LOSSES.parse({"name": "fne"}, "loss")
    loss = FNELoss(params)
    batch = ToyData().batch(0)
    img, txt = model(batch)
    with pytest.raises(VsekitError, match="bind"):
        loss(img, txt, batch.image_ids, epoch=1, step=0, batch=batch, model=model)
    with pytest.raises(VsekitError, match="config"):
        loss.bind(model=model)
    loss = bound_loss(model)
    with pytest.raises(VsekitError, match="step="):
        loss(img, txt, batch.image_ids, epoch=1, batch=batch, model=model)
    with pytest.raises(VsekitError, match="model="):
        loss(img, txt, batch.image_ids, epoch=0, step=0, batch=batch)
    with pytest.raises(VsekitError, match="embed_dim"):
        wide = bound_loss(model)
        wide.queue = MemoryQueue(4, dim=5)
        wide(img, txt, batch.image_ids, epoch=1, step=0, batch=batch, model=model)


def test_bind_makes_a_frozen_copy_and_checkpointed_state() -> None:
    model = ToyVSE()
    loss = bound_loss(model, queue_size=9)
    assert all(not p.requires_grad for p in loss.parameters())
    keys = set(loss.state_dict())
    assert {"stats.moments", "queue.image", "queue.text", "queue.ids", "queue.ptr",
            "momentum_model.image_encoder.weight"} <= keys
    assert loss.queue.image.shape == (9, 8)


@pytest.mark.parametrize("id_mask", [False, True])
def test_warmup_is_inbatch_vsepp_with_momentum_update_and_no_state(id_mask: bool) -> None:
    model, data = ToyVSE(), ToyData()
    loss = bound_loss(model, queue_size=12, warmup_id_mask=id_mask, momentum=0.9)
    queue_before = {k: v.clone() for k, v in loss.queue.state_dict().items()}
    copy_before = [p.clone() for p in loss.momentum_model.parameters()]
    batch = data.batch(3)
    batch.image_ids[1] = batch.image_ids[0]  # a second caption of one image
    img, txt = model(batch)
    out = loss(img, txt, batch.image_ids, epoch=0, step=0, batch=batch, model=model)
    expected = vsepp_loss(img @ txt.T, exclusion_mask(batch.image_ids, id_mask), 0.2, "mean")
    torch.testing.assert_close(out.loss, expected)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # the optimiser step moved the online model: the copy must follow
    loss.commit_step()
    for k, v in loss.queue.state_dict().items():
        assert torch.equal(v, queue_before[k])
    assert float(loss.stats.moments.abs().sum()) == 0
    for old, new, online in zip(copy_before, loss.momentum_model.parameters(),
                                model.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online.detach())
    assert set(loss.last_picks) == {"i2t", "t2i"}


def test_step_order_momentum_update_then_features_then_loss_then_enqueue() -> None:
    model, data = ToyVSE(), ToyData()
    loss = bound_loss(model, queue_size=12, warmup_epochs=0, momentum=0.8)
    model.eval()  # no dropout, so features can be recomputed exactly
    # 1. a committed step updates the copy towards the online model after its optimiser step
    #    (the update the reference makes at the start of the next step) ...
    first = data.batch(5)
    img, txt = model(first)
    loss(img, txt, first.image_ids, epoch=0, step=0, batch=first, model=model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    copy_before = [p.clone() for p in loss.momentum_model.parameters()]
    loss.commit_step()
    for old, new, online in zip(copy_before, loss.momentum_model.parameters(),
                                model.parameters(), strict=True):
        torch.testing.assert_close(new, 0.8 * old + 0.2 * online.detach())
    queue_before = {k: v.clone() for k, v in loss.queue.state_dict().items()}
    batch = data.batch(0)
    img, txt = model(batch)
    out = loss(img, txt, batch.image_ids, epoch=0, step=1, batch=batch, model=model)
    assert not loss.momentum_model.training  # follows the online model's mode
    # 2. ... before the next step's momentum features (they are what gets enqueued) ...
    with torch.no_grad():
        img_m, txt_m = loss.momentum_model(batch)
    loss.commit_step()
    torch.testing.assert_close(loss.queue.image[8:], img_m[:4])
    torch.testing.assert_close(loss.queue.image[:4], img_m[4:])
    torch.testing.assert_close(loss.queue.text[8:], txt_m[:4])
    assert loss.queue.ids[8:].tolist() == batch.image_ids[:4].tolist()
    assert int(loss.queue.ptr) == 4
    # 3. ... and the loss used the queue as it was before this batch's write.
    cap_pool = torch.cat([txt_m, queue_before["text"]])
    img_pool = torch.cat([img_m, queue_before["image"]])
    pool_ids = torch.cat([batch.image_ids, queue_before["ids"]])
    mask = batch.image_ids[:, None] == pool_ids[None, :]
    total = 0.0
    for anchor, pool, pick in ((img, cap_pool, loss.last_picks["i2t"]),
                               (txt, img_pool, loss.last_picks["t2i"])):
        sims = anchor.detach() @ pool.T
        for i, j in enumerate(pick.index.tolist()):
            if not mask[i, j]:
                total += max(0.0, 0.2 + float(sims[i, j]) - float(sims[i, i]))
    assert float(out.loss.detach()) == pytest.approx(total / 8, rel=1e-5)
    # picks carry the split rows of the pool entries
    pool_caption = torch.cat([batch.caption_index, queue_before["caption_index"]])
    assert torch.equal(loss.last_picks["i2t"].caption_index,
                       pool_caption[loss.last_picks["i2t"].index])


def test_a_step_and_its_commit_make_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = ToyVSE(), ToyData()
    loss = bound_loss(model, queue_size=5, warmup_epochs=1, min_count=0)
    for epoch, step in ((0, 0), (1, 1), (1, 2)):
        batch = data.batch(step)
        img, txt = model(batch)

        def forbidden(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("host sync inside the FNE step")

        with monkeypatch.context() as patch:
            for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__",
                         "__index__"):
                patch.setattr(torch.Tensor, name, forbidden)
            out = loss(img, txt, batch.image_ids, epoch=epoch, step=step, batch=batch,
                       model=model)
            loss.commit_step()
        out.loss.backward()
    assert float(loss.stats.count) > 0


def test_state_changes_only_when_the_step_is_committed() -> None:
    """A step the trainer skips (no commit) leaves queue, statistics and momentum weights as
    they were; committing the same step applies exactly what the call computed."""
    data = ToyData()
    model, loss, optimizer = fresh_run(warmup_epochs=0)
    run_steps(model, loss, data, range(6), 6, optimizer)
    assert float(loss.stats.count) > 0  # the toy model makes mutually top-1 pairs by now
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    batch = data.batch(6)
    img, txt = model(batch)
    loss(img, txt, batch.image_ids, epoch=0, step=6, batch=batch, model=model)
    for key, value in loss.state_dict().items():
        assert torch.equal(value, before[key]), key
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # as an optimiser step would
    expected = loss.stats.fork()
    expected.update(inbatch_observations((img @ txt.T).detach()))
    loss.commit_step()
    assert torch.equal(loss.stats.moments, expected.moments)
    assert float(loss.stats.count) > float(before["stats.moments"][0, 0])
    assert int(loss.queue.ptr) == (int(before["queue.ptr"]) + 8) % loss.queue.size
    for key in ("momentum_model.image_encoder.weight", "momentum_model.text_encoder.0.bias"):
        assert not torch.equal(loss.state_dict()[key], before[key]), key
    committed = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.commit_step()  # nothing pending: a no-op
    for key, value in loss.state_dict().items():
        assert torch.equal(value, committed[key]), key


def test_resume_from_state_dict_continues_bit_identically() -> None:
    data = ToyData()
    model, loss, optimizer = fresh_run()
    straight = run_steps(model, loss, data, range(9), 3, optimizer)

    model, loss, optimizer = fresh_run()
    first = run_steps(model, loss, data, range(5), 3, optimizer)
    saved = {"model": model.state_dict(), "loss": loss.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}  # as trainer
    model, loss, optimizer = fresh_run()
    model.load_state_dict(saved["model"])
    loss.load_state_dict(saved["loss"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])  # the toy model's dropout draws from it
    for key, value in saved["loss"].items():
        assert torch.equal(loss.state_dict()[key], value), key
    second = run_steps(model, loss, data, range(5, 9), 3, optimizer)
    assert first + second == straight
    # a different seed draws other negatives
    model, loss, optimizer = fresh_run(seed=1)
    assert run_steps(model, loss, data, range(9), 3, optimizer) != straight


def test_multinomial_sampler_and_pool_statistics_run() -> None:
    data = ToyData()
    for options in ({"sampler": "multinomial"}, {"stats_source": "pool", "exact_variance": True},
                    {"reference_numerics": True}, {"queue_size": 0}):
        model = ToyVSE()
        loss = bound_loss(model, min_count=3, warmup_epochs=0, **options)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = run_steps(model, loss, data, range(4), 2, optimizer)
        assert all(math.isfinite(v) for v in losses)
        picks = loss.last_picks["i2t"].index
        assert (picks < 8 + loss.queue.size).all()


def test_autocast_step_computes_similarities_in_float32() -> None:
    model, data = ToyVSE(), ToyData()
    loss = bound_loss(model, queue_size=6, warmup_epochs=0, min_count=0)
    batch = data.batch(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img, txt = model(batch)
        out = loss(img, txt, batch.image_ids, epoch=0, step=0, batch=batch, model=model)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert loss.queue.image.dtype == torch.float32


def test_tiny_training_learns_and_statistics_become_ready() -> None:
    data = ToyData()
    model, loss, optimizer = fresh_run()
    before = data.recall_at_1(model)
    losses = run_steps(model, loss, data, range(30), 10, optimizer)
    after = data.recall_at_1(model)
    assert after > before + 0.3, (before, after)
    assert sum(losses[-10:]) < sum(losses[10:20])
    batch = data.batch(30)
    img, txt = model(batch)
    out = loss(img, txt, batch.image_ids, epoch=2, step=30, batch=batch, model=model)
    assert float(out.diagnostics["fne_ready"]) == 1.0
    assert 0 < float(out.diagnostics["neg_mean"]) < float(out.diagnostics["pos_mean"])
    assert all(math.isfinite(float(v)) for v in out.diagnostics.values())


def test_seed_follows_the_run_unless_set() -> None:
    model = ToyVSE()
    follows = LOSSES.build(*LOSSES.parse({"name": "fne"}, "loss"))
    follows.bind(model=model, config=Config(seed=7, model=ModelConfig(embed_dim=8)))
    fixed = LOSSES.build(*LOSSES.parse({"name": "fne", "seed": 3407}, "loss"))
    fixed.bind(model=model, config=Config(seed=7, model=ModelConfig(embed_dim=8)))
    assert (follows.params.seed, fixed.params.seed) == (7, 3407)
